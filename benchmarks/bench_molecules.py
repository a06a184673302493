"""One model, K = 1, 2, 4, 8 deterministic steps with exact weights, against a reference.

    python benchmarks/bench_molecules.py CHECKPOINT --reference REF [REF ...] [--steps 1 2 4 8]
        [--n 20000] [--md-json runs/aldp_md/aldp_md.json] [--out runs/bench_CHECKPOINTNAME]

For every K: draws n samples with exact log-weights (wall and CPU time recorded), writes them to
--out, runs `molsample compare` against the reference and prints one row of metrics, raw and
reweighted: for peptides KL(phi), KL(psi), torus W2, dF(phi>0 vs phi<0) and its distance to the
reference in combined standard errors; for particle systems energy W1/W2, W2^2 (DEM convention
for LJ, as the published tables), pair-distance W2 and equivariant W2; always the Kish ESS, the
number of det <= 0 samples, and effective samples per CPU-second. With --md-json (an
`molsample md` output) it also prints MD's independent samples per CPU-second for sin(phi).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from molsample.analysis.compare import compare
from molsample.analysis.ensembles import Ensemble, load_ensemble
from molsample.io import save_samples
from molsample.sampler import sample
from molsample.train import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--reference", nargs="+", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--md-json")
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    exp, ckpt = load_checkpoint(args.checkpoint)
    out = Path(args.out or f"runs/bench_{Path(args.checkpoint).parent.name}")
    out.mkdir(parents=True, exist_ok=True)
    ref = load_ensemble(args.reference, exp.target, "reference")
    st = ckpt["state"]
    print(f"# {args.checkpoint}: {exp.target.name}, route {exp.route}, {st['iteration']} iterations, "
          f"{st['cpu_seconds'] / 60:.0f} training CPU-min; n = {args.n} per K; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, {time.strftime('%Y-%m-%d')}")
    rows = []
    for k in args.steps:
        gen = torch.Generator().manual_seed(args.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        s = sample(exp.velocity(), exp.prior, exp.target, args.n, k, "exact", gen, batch_size=args.batch,
                   dtype=exp.dtype)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        save_samples(out / f"K{k}.npz", "samples", {"system": exp.target.name, "steps": k}, x=s.x.double().numpy(),
                     log_q=s.log_q.double().numpy(), log_w=s.log_w.double().numpy(), log_prob=s.log_prob.double().numpy())
        ens = Ensemble.from_samples(s.x.double(), s.log_w.double(), exp.target, f"K={k}")
        m = compare(ens, ref, exp.target)
        m.update(steps=k, cpu_seconds=cpu, wall_seconds=wall, n_nonpositive_det=s.n_nonpositive_det,
                 lipschitz_max=s.lipschitz_max, fraction_lipschitz_below_1=s.info["fraction_lipschitz_below_1"],
                 fraction_monotone=s.info["fraction_monotone"])
        ess = m["sample"]["ess"]["value"]
        m["effective_samples_per_cpu_second"] = ess * args.n / cpu
        (out / f"K{k}_metrics.json").write_text(json.dumps(m, indent=2, default=float))
        rows.append(m)
        print(row(m), flush=True)
    if args.md_json:
        md = json.loads(Path(args.md_json).read_text())
        n_eff = sum(r["statistics"]["sin_phi"]["n_eff"] for r in md["replicas"])
        cpu = sum(r["wall_seconds"] for r in md["replicas"])            # one core per replica
        print(f"MD ({args.md_json}): {n_eff:.0f} independent samples of sin(phi) in {cpu:.0f} CPU-s = "
              f"{n_eff / cpu:.2f} per CPU-second")


def row(m: dict) -> str:
    k, ess = m["steps"], m["sample"]["ess"]
    head = (f"K={k}: ESS {ess['value']:.4f} +- {ess['stderr']:.4f}, det<=0 {m['n_nonpositive_det']}, "
            f"bijectivity ratio < 1 at {100 * m['fraction_lipschitz_below_1']:.1f} % (max {m['lipschitz_max']:.2f}), "
            f"monotone at {100 * m['fraction_monotone']:.1f} %, "
            f"{m['cpu_seconds']:.0f} CPU-s, {m['effective_samples_per_cpu_second']:.3g} eff. samples/CPU-s")
    parts = [head]
    for v in ("raw", "reweighted"):
        if v not in m:
            continue
        r = m[v]
        if "kl_phi" in r:
            d = r["dF_phi_positive_minus_negative_kT"]
            parts.append(f"  {v}: KL phi {r['kl_phi']:.4f} psi {r['kl_psi']:.4f} W2torus {r['w2_torus_phi_psi']:.3f} "
                         f"dF {d['value']:.3f}+-{d['stderr']:.3f} (z {r['dF_minus_reference_kT']['z']:.1f}) "
                         f"E-W1 {r['energy_w1_kT']:.2f} E-W2 {r['energy_w2_kT']:.2f}")
        else:
            dem = r.get("dem_convention", {})
            parts.append(f"  {v}: E-W1 {r['energy_w1_kT']:.3f} E-W2 {r['energy_w2_kT']:.3f} "
                         f"E-W2^2 {r['energy_w2_squared_kT2']:.3f}"
                         + (f" [DEM conv. E-W2^2 {dem['energy_w2_squared']:.3f}]" if dem else "")
                         + f" pairdist-W2 {r['pair_distance_w2']:.4f} eqW2 {r['equivariant_w2']:.3f}")
    return "\n".join(parts)


if __name__ == "__main__":
    main()
