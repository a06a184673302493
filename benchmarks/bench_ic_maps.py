"""The internal-coordinate one-step maps side by side: the MLP over the latent vector against the graph network
over the molecule (without and with distance gates), on the same base, measured in one run.

    python benchmarks/bench_ic_maps.py [--molecule aldp] [--n 2048] [--threads 1] [--json FILE]

For each map: draws with exact weights per second (base draw, one step with its exact log-det, placement,
force field) and one training iteration (fwd + bwd of the batch-ESS loss at batch 128) in seconds, with the
ratio to the MLP. The maps are built at random weights with the gate open (the cost does not depend on the
weights). The base is the shipped model's for aldp, a base fitted to the replica-exchange frames for ala3.
Prints markdown.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from molsample.coords import InternalCoordinates
from molsample.coords.base import StructuredBase
from molsample.coords.flow import LipschitzResidualMap, OneStepSampler
from molsample.coords.graph import GraphResidualMap
from molsample.coords.target import InternalCoordinateTarget
from molsample.targets import load_target

ROOT = Path(__file__).resolve().parents[1]


def base_of(molecule: str):
    cart = load_target(molecule)
    if molecule == "aldp":
        from molsample.coords.model import load_internal_checkpoint
        sampler, _ = load_internal_checkpoint(ROOT / "systems/aldp/models/aldp-ic.pt")
        return cart, sampler.base
    from molsample.data import load_frames
    ic = InternalCoordinates(cart.topology)
    x, lw = load_frames(ROOT / f"systems/{molecule}/reference/{molecule}_pt_2x2ns.npz", cart)
    return cart, StructuredBase.fit(ic, x, lw, cart.topology)


def timed(fn, repeats: int = 2) -> float:
    fn()                                            # warm-up (first-call allocations, e3nn imports)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--molecule", default="aldp")
    ap.add_argument("--n", type=int, default=2048, help="draws per timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cart, base = base_of(args.molecule)
    target = InternalCoordinateTarget(cart, ic=base.ic)
    gen = torch.Generator().manual_seed(0)
    maps = {"MLP (hidden 128, 2 layers)": LipschitzResidualMap(len(base.soft), base.n_linear, generator=gen),
            "graph, no gates (hidden 16, 3 layers)": GraphResidualMap(cart, base, hidden=16, layers=3, generator=gen),
            "graph, distance gates (rbf 8)": GraphResidualMap(cart, base, hidden=16, layers=3, rbf=8, generator=gen)}
    rows = []
    for name, flow in maps.items():
        with torch.no_grad():
            flow.gate.fill_(1.0)
        sampler = OneStepSampler(base, target, flow)

        def draw():
            with torch.no_grad():
                d = sampler.draw(args.n, torch.Generator().manual_seed(1))
                sampler.log_weights(d)

        def step():
            flow.zero_grad()
            loss, _ = sampler.objective("ess", 128, torch.Generator().manual_seed(2))
            loss.backward()
        rows.append({"map": name, "parameters": sum(p.numel() for p in flow.parameters()),
                     "draws_per_s": args.n / timed(draw), "train_step_s": timed(step)})
    ref = rows[0]
    print(f"{args.molecule}: {base.n_linear + len(base.soft)} latent dimensions, {cart.topology.n_atoms} atoms; "
          f"{args.threads} thread(s), {platform.machine()}, torch {torch.__version__}\n")
    print("| map | parameters | draws with exact weights / s | vs MLP | training iteration (batch 128), s | vs MLP |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['map']} | {r['parameters']:,} | {r['draws_per_s']:.0f} | {r['draws_per_s'] / ref['draws_per_s']:.2f} "
              f"| {r['train_step_s']:.3f} | {r['train_step_s'] / ref['train_step_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"molecule": args.molecule, "threads": args.threads, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
