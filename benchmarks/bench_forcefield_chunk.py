"""Force-field evaluation of a large batch at once against the same rows in chunks (OpenMMTarget.energy_chunk).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_forcefield_chunk.py [--system aldp] [--n 20000]

Times the reduced energy of n conformations (perturbed copies of the system's structure) with the force field
called on all rows at once and on chunks of 64-4096 rows, in one run; prints seconds, user/system CPU and the
ratio to the chunk size the target uses, and the largest difference of the energies from the unchunked ones.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from molsample.targets import load_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", default="aldp")
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = load_target(args.system)
    g = torch.Generator().manual_seed(0)
    x0 = torch.as_tensor(t.positions)
    x = x0 + 0.005 * torch.randn(args.n, *x0.shape, generator=g, dtype=torch.float64)
    rows, ref = {}, None
    for chunk in (args.n, 4096, 1024, 256, 64):
        t.energy_chunk = chunk
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with torch.no_grad():
            u = t.energy(x)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        rows[chunk] = (w1 - w0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)
        ref = u if ref is None else ref
        diff = float((u - ref).abs().max())
        print(f"chunk {chunk:>6}: {w1 - w0:7.2f} s wall, user {rows[chunk][1]:6.2f} s, system {rows[chunk][2]:6.2f} s, "
              f"largest |u - u(unchunked)| {diff:.1e} kT", flush=True)
    base = rows[type(t).energy_chunk][0]
    for chunk, (wall, _, _) in rows.items():
        print(f"chunk {chunk:>6}: {wall / base:5.2f} x the time at the target's chunk ({type(t).energy_chunk})")


if __name__ == "__main__":
    main()
