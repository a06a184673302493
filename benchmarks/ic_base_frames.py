"""How the structured base's importance-sampling efficiency grows with the frames it is fitted to.

The base of a config (its `base` section, e.g. the local network of experiments/ala3-internal/ala3-ic-local.yaml)
is fitted, with no refits, to random subsets of the pooled frames of the data files (each file its share of the
weight, frames weighted by w^weight_power, as `molsample train` pools them); for each subset size: the fit's CPU
time, the mean log q and the spread of the log-weights log w = -u - log q of held-out frames (a file not fitted
to; 0 for a perfect base), and the Kish ESS of fresh draws per seed. If the ESS still rises steeply at the largest
size, more frames is the way to a better base; if it has levelled off, the form of the base is what limits it.

    OMP_NUM_THREADS=1 python benchmarks/ic_base_frames.py --config experiments/ala3-internal/ala3-ic-local.yaml \
        --frames systems/ala3/reference/ala3_pt_2x2ns.npz [--frames MORE.npz ...] \
        --heldout systems/ala3/reference/ala3_pt_2x2.5ns_s34.npz --sizes 1000 2000 4000 [--draws 20000 --seeds 1 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from molsample.coords.base import StructuredBase
    from molsample.coords.config import ICExperimentConfig
    from molsample.coords.model import training_frames
    from molsample.coords.target import InternalCoordinateTarget
    from molsample.coords.transform import InternalCoordinates
    from molsample.data import load_frames
    from molsample.estimate import ess
    from molsample.targets import load_target
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="an internal-coordinate config; its base section is fitted")
    ap.add_argument("--frames", action="append", required=True, help="data files pooled (equal shares)")
    ap.add_argument("--heldout", required=True, help="frames scored but never fitted to")
    ap.add_argument("--sizes", type=int, nargs="+", required=True, help="frames per fit (random subsets)")
    ap.add_argument("--draws", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--subset-seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ICExperimentConfig.load(args.config)
    cart = load_target(cfg.target)
    ic = InternalCoordinates(cart.topology)
    target = InternalCoordinateTarget(cart, ic=ic)
    x, lw = training_frames(dataclasses.replace(cfg.data, paths=tuple(args.frames), shares=()), cart)
    xh, lwh = load_frames(args.heldout, cart)
    yh = ic.forward(torch.as_tensor(xh, dtype=torch.float64))
    wh = np.exp(lwh - lwh.max())
    wh /= wh.sum()
    kw = cfg.base.fit_kwargs()
    rng = np.random.default_rng(args.subset_seed)
    print(f"# {cfg.target}: the base of {args.config} fitted to subsets of {len(x):,} pooled frames of "
          f"{', '.join(args.frames)}; held out: {args.heldout} ({len(xh):,} frames, their weights); ESS of "
          f"{args.draws:,} draws per seed {args.seeds}\n")
    print("| frames fitted | effective (Kish) | fit CPU-s | held-out mean log q | sd of log w, held-out | Kish ESS |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        idx = rng.choice(len(x), size=min(n, len(x)), replace=False)
        c0 = time.process_time()
        base = StructuredBase.fit(ic, x[idx], lw[idx], cart.topology, **kw)
        cpu = time.process_time() - c0
        with torch.no_grad():
            lq = base.log_prob(yh)
            lwf = target.log_weights(yh, lq).numpy()
        ok = np.isfinite(lwf)
        mean_lq = float((wh * lq.numpy()).sum())
        sd = float(np.sqrt(np.cov(lwf[ok], aweights=wh[ok])))
        es = []
        for s in args.seeds:
            gen = torch.Generator().manual_seed(s)
            lws = []
            with torch.no_grad():
                for start in range(0, args.draws, 20000):
                    y, log_q = base.sample(min(20000, args.draws - start), gen)
                    lws.append(target.log_weights(y, log_q).numpy())
            es.append(ess(np.concatenate(lws), n_boot=0).value)
        print(f"| {len(idx):,} | {ess(lw[idx], n_boot=0).value * len(idx):,.0f} | {cpu:.1f} | {mean_lq:.2f} | "
              f"{sd:.2f} | {', '.join(f'{e:.4f}' for e in es)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
