"""Data-parallel training and sharded sampling: throughput at 1 and 2 processes, measured in one run.

    python benchmarks/bench_distributed.py [--json runs/bench_distributed.json]

For each case the command runs twice, with a short and a long workload (iterations or samples), and
the rate is (long - short) / (wall time of long - wall time of short): start-up (imports, the
process group, the base fit, the first and last evaluation) cancels. Three layouts of the same
machine: one process on one thread (the baseline every ratio is against), one process on all cores
(torch's intra-op threads), and N processes of one thread each (``--nproc N``, torch.distributed with
gloo). Cases: training the shipped alanine-dipeptide internal-coordinate model (configs/aldp-ic.yaml,
its base fitted without refits so that the start-up stays short; the iteration cost is the same), the
Cartesian data route on alanine dipeptide (configs/tiny-aldp-data.yaml at a larger batch), and drawing
samples with exact weights from the shipped model (systems/aldp/models/aldp-ic.pt). Prints markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IC_TRAIN = ["train", "configs/aldp-ic.yaml", "--set", "base.refine_rounds=0", "--set", "train.eval_samples=200",
            "--set", "train.eval_every=1000000", "--set", "train.checkpoint_every=1000000", "--quiet"]
DATA_TRAIN = ["train", "configs/tiny-aldp-data.yaml", "--set", "train.batch=128", "--set", "train.distill.batch=64",
              "--set", "train.eval_every=1000000", "--set", "train.checkpoint_every=1000000", "--set",
              "train.eval_samples=16", "--quiet"]
SAMPLE = ["sample", "systems/aldp/models/aldp-ic.pt", "--seed", "1"]


def run(args: list[str], threads: int, nproc: int, work: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "molsample", *args] + (["--nproc", str(nproc)] if nproc > 1 else [])
    if work.exists():
        shutil.rmtree(work)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall


def rate(kind: str, short: int, long: int, threads: int, nproc: int, tmp: Path) -> dict:
    walls = []
    for size in (short, long):
        work = tmp / f"{kind}-{threads}-{nproc}-{size}"
        if kind == "sample":
            args = SAMPLE + ["--n", str(size), "--out", str(work) + ".npz"]
            work = Path(str(work) + ".npz")
        else:
            args = (IC_TRAIN if kind == "ic" else DATA_TRAIN) + ["--iterations", str(size), "--out", str(work)]
        walls.append(run(args, threads, nproc, work))
    return {"threads": threads, "nproc": nproc, "short": short, "long": long, "wall_short_s": walls[0],
            "wall_long_s": walls[1], "rate_per_s": (long - short) / (walls[1] - walls[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=os.cpu_count() or 2, help="processes of the parallel layout")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    n = args.nproc
    layouts = [(1, 1), (n, 1), (1, n)]                  # (threads, processes)
    cases = {"ic": ("train aldp-ic (internal coordinates, batch 128)", "iterations", 40, 200),
             "data": ("train aldp data route (Cartesian EGNN, batch 128)", "iterations", 10, 50),
             "sample": ("sample aldp-ic with exact weights", "samples", 16384, 81920)}
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d"), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key, (title, unit, short, long) in cases.items():
            out["cases"][key] = {"title": title, "unit": unit,
                                 "layouts": [rate(key, short, long, t, p, Path(tmp)) for t, p in layouts]}
    print(f"machine: {out['machine']}; date {out['date']}\n")
    print(f"| case | unit | 1 process x 1 thread | 1 process x {n} threads | {n} processes x 1 thread "
          f"(--nproc {n}) | {n} processes / 1 x 1 | {n} processes / 1 x {n} threads |")
    print("|---|---|---|---|---|---|---|")
    for c in out["cases"].values():
        r = [lay["rate_per_s"] for lay in c["layouts"]]
        print(f"| {c['title']} | {c['unit']}/s | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} | {r[2] / r[0]:.2f} | "
              f"{r[2] / r[1]:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
