"""Energy fine-tuning of the one-step internal-coordinate map by its reverse KL (exact log-det), from
the structured base (the map starts at the identity), with the ESS of 4,000 fresh draws every 100
iterations.

    python benchmarks/train_ic_onestep_kl.py --lr 3e-3 --hidden 128 --iterations 3000
"""
from __future__ import annotations

import argparse
import time

import torch

from bench_ic_base import setup        # benchmarks/ is on the path when this script runs
from molsample.coords.flow import LipschitzResidualMap, OneStepSampler
from molsample.estimate import ess


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", default="aldp")
    p.add_argument("--frames", default="systems/aldp/reference/aldp_md_2x50ns.npz")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=100)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, _, target, _, _, base, _ = setup(args.system, [args.frames])
    flow = LipschitzResidualMap(len(base.soft), base.n_linear, hidden=args.hidden,
                                generator=torch.Generator().manual_seed(0))
    sampler = OneStepSampler(base, target, flow)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(flow.parameters(), lr=args.lr)

    def evaluate(seed=123, n=4000):
        with torch.no_grad():
            d = sampler.draw(n, torch.Generator().manual_seed(seed))
            return ess(sampler.log_weights(d).numpy(), n_boot=0).value, int((d["sign"] <= 0).sum())

    print("start: ESS, det <= 0:", evaluate(), flush=True)
    t0 = time.process_time()
    for it in range(1, args.iterations + 1):
        opt.zero_grad()
        loss, logs = sampler.reverse_kl(args.batch, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        if it % args.eval_every == 0:
            print(it, logs, "ESS, det <= 0:", evaluate(), "CPU-s", round(time.process_time() - t0), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
