"""How far the flow-matching pairs (prior draw, reference frame) are apart under each coupling.

    python benchmarks/bench_coupling.py SYSTEM FRAMES [--s0 1.0] [--batch 64] [--batches 20]

Mean squared distance |x1 - x0|^2 per pair (summed over coordinates) for independent pairs, the
minibatch OT coupling, and OT followed by data.align (rotation; rotation-permutation for identical
particles), with the CPU milliseconds per batch each coupling costs. Shorter pairs mean straighter
conditional paths, which is what large steps need. Frames are drawn as the data route draws them
(centred, mirrored, weights power 1).
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from molsample import align
from molsample.data import FrameSampler, load_frames
from molsample.flow import Prior, Space
from molsample.targets import load_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("system")
    ap.add_argument("frames")
    ap.add_argument("--s0", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    target = load_target(args.system)
    x, lw = load_frames(args.frames, target)
    space = Space(target.event_shape, target.com_free)
    frames = FrameSampler(x, lw, space, 1.0, True, torch.float64)
    prior = Prior(space, args.s0)
    modes = ["rotation"] + (["rotation-permutation"] if target.identical_particles else [])
    names = ["independent", "minibatch OT"] + [f"OT + align {m}" for m in modes]
    dist = {k: [] for k in names}
    cpu = dict.fromkeys(names, 0.0)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.batches):
        x1 = frames.sample(args.batch, gen)
        x0 = prior.sample(args.batch, gen, dtype=torch.float64)
        dist["independent"].append(float((x1 - x0).pow(2).sum((1, 2)).mean()))
        c = time.process_time()
        y0 = align.ot_coupling(x0, x1)
        cpu["minibatch OT"] += time.process_time() - c
        dist["minibatch OT"].append(float((x1 - y0).pow(2).sum((1, 2)).mean()))
        for m in modes:
            c = time.process_time()
            y1 = align.align_pairs(y0, x1, permute=m == "rotation-permutation")
            cpu[f"OT + align {m}"] += time.process_time() - c
            dist[f"OT + align {m}"].append(float((y1 - y0).pow(2).sum((1, 2)).mean()))
    print(f"# {args.system}: {args.frames} ({len(x)} frames), prior s0 {args.s0}, batch {args.batch}, "
          f"{args.batches} batches; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print("| coupling | mean squared pair distance | per coordinate | CPU ms per batch (coupling step) |")
    print("|---|---|---|---|")
    dof = int(np.prod(target.event_shape))
    for k in names:
        v = np.asarray(dist[k])
        print(f"| {k} | {v.mean():.2f} +- {v.std(ddof=1) / np.sqrt(len(v)):.2f} | {v.mean() / dof:.3f} | "
              f"{1000 * cpu[k] / args.batches:.0f} |")


if __name__ == "__main__":
    main()
