"""Energy+forces throughput: batched torch force field vs OpenMM, same conformations, one run.

    python benchmarks/bench_forcefield.py [--batch 1024] [--repeats 5] [--compile]

For each system (aldp, lj55) this evaluates energies and forces of the same `batch`
conformations with
  - molsample's torch force field, batched, float32 and float64 (forces by autograd),
  - OpenMM Reference and CPU platforms, one conformation per call (setPositions + getState),
and prints conformations/second, the ratio torch / OpenMM Reference, and the float32 and
float64 errors against OpenMM Reference (max |dE| in kJ/mol or kT, max |dF| per component).
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from molsample.targets import OpenMMEvaluator, load_target
from molsample.targets.structures import mackay_icosahedron

FIXTURE = "tests/fixtures/aldp_conformations.npz"


def conformations(name: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    if name == "aldp":
        base = np.load(FIXTURE)["xyz"]
        x = base[rng.integers(0, len(base), batch)]
        return x + 0.003 * rng.standard_normal(x.shape)
    # LJ55: Mackay icosahedra expanded by 5 % with 0.05 r_m Gaussian noise (no pair near the soft cap)
    base = mackay_icosahedron(2, spacing=1.05)
    return base[None] + 0.05 * rng.standard_normal((batch, *base.shape))


def torch_energy_forces(energy_fn, x: torch.Tensor):
    x = x.detach().requires_grad_(True)
    e = energy_fn(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), -g


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name: str, batch: int, repeats: int, use_compile: bool, n_openmm: int) -> list[dict]:
    target = load_target(name)
    rng = np.random.default_rng(0)
    xs = conformations(name, batch, rng)
    system, kt = target.openmm_system()
    # energy in the force field's own unit: kJ/mol for molecules, kT (reduced) for LJ
    molecule = target.kt is not None
    unit_scale = 1.0 if molecule else kt
    energy_fn = target.energy_kj if molecule else target.energy
    rows = []
    ref_e = ref_f = None
    for plat in ("Reference", "CPU"):
        ev = OpenMMEvaluator(system, plat)
        sub = xs[:n_openmm]
        t = time_it(lambda: ev(sub), 1)
        e, f = ev(xs) if plat == "Reference" else (None, None)
        if plat == "Reference":
            ref_e, ref_f = e / unit_scale, f / unit_scale
        rows.append({"system": name, "method": f"OpenMM {plat}, 1 conformation/call", "rate": len(sub) / t})
    variants = [(torch.float32, False), (torch.float64, False)]
    if use_compile:
        variants += [(torch.float32, True)]
    for dtype, comp in variants:
        x = torch.as_tensor(xs, dtype=dtype)
        fn = (lambda xx: torch_energy_forces(energy_fn, xx))
        label = f"torch batch {batch}, {str(dtype).replace('torch.', '')}"
        if comp:
            t0 = time.perf_counter()
            fn = torch.compile(fn)
            fn(x)
            label += f", torch.compile (compile {time.perf_counter() - t0:.0f} s)"
        t = time_it(lambda: fn(x), repeats)
        e, f = fn(x)
        rows.append({"system": name, "method": label, "rate": batch / t,
                     "err_e": float(np.abs(e.double().numpy() - ref_e).max()),
                     "err_f": float(np.abs(f.double().numpy() - ref_f).max()),
                     "max_f": float(np.abs(ref_f).max())})
    ref_rate = rows[0]["rate"]
    for r in rows:
        r["ratio"] = r["rate"] / ref_rate
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--openmm-calls", type=int, default=1024, help="conformations timed per OpenMM platform")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd float32 path")
    ap.add_argument("--systems", nargs="+", default=["aldp", "lj55"])
    args = ap.parse_args()
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | {time.strftime('%Y-%m-%d')}")
    print("| system | method | conformations/s | ratio to OpenMM Reference | max abs dE vs Reference | "
          "max abs dF vs Reference (per component) |")
    print("|---|---|---|---|---|---|")
    for name in args.systems:
        unit = "kJ/mol" if name.startswith("aldp") else "kT"
        for r in bench(name, args.batch, args.repeats, args.compile, args.openmm_calls):
            err = (f"{r['err_e']:.1e} {unit} | {r['err_f']:.1e} {unit}/nm (max |F| {r['max_f']:.0f})"
                   if "err_e" in r else "reference | reference")
            if name != "aldp" and "err_e" in r:
                err = err.replace("/nm", "/length")
            print(f"| {r['system']} | {r['method']} | {r['rate']:,.0f} | {r['ratio']:.2f} | {err} |")


if __name__ == "__main__":
    main()
