"""Cost of the equivariant drift and of exact one-step weights, measured in one run.

    python benchmarks/bench_drift.py [--config configs/aldp-data.yaml] [--batch 256] [--threads 2]

Prints, for the model of the config (random weights; the cost does not depend on them):
  - forward+backward of the network for `batch` conformations (the project's budget for
    alanine dipeptide: <= 0.25 s for 256 on 2 cores), and forward alone;
  - the exact Jacobian of the one-step map on the zero-centroid subspace for the same batch by
    (a) the network's hand-written forward mode, (b) dof batched reverse-mode vector-Jacobian
    products (autograd), (c) torch.func.jvp under vmap; the ratio of each to one forward+backward,
    the agreement of (a) with (b), and exact weights per second.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.func import jvp, vmap

from molsample.build import build
from molsample.config import ExperimentConfig
from molsample.jacobian import velocity_jacobian


def timed(fn, repeats: int) -> float:
    fn()                                                     # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/aldp-data.yaml")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exp = build(ExperimentConfig.load(args.config))
    core = exp.model if exp.route == "data" else exp.model.core
    with torch.no_grad():
        for p in core.out.parameters():                     # the output layer starts at zero
            p.normal_(0.0, 0.1)
    gen = torch.Generator().manual_seed(0)
    x = exp.prior.sample(args.batch, gen, dtype=exp.dtype)
    t = torch.zeros(args.batch, dtype=exp.dtype)
    d = torch.ones(args.batch, dtype=exp.dtype)
    space = exp.space
    print(f"# {args.config}: {exp.target.name}, {type(core).__name__}, "
          f"{sum(p.numel() for p in core.parameters())} parameters, dof {space.dof}, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        core(xg, t, d).pow(2).sum().backward()

    def fwd():
        with torch.no_grad():
            core(x, t, d)

    t_fb, t_f = timed(fwd_bwd, args.repeats), timed(fwd, args.repeats)
    print(f"forward+backward {t_fb:.4f} s   forward {t_f:.4f} s   (budget for aldp: 0.25 s fwd+bwd)")
    basis = space.basis(exp.dtype)
    reps = max(1, args.repeats // 2)
    fast = torch.no_grad()(lambda: core.jacobian(x, t, d, basis))
    t_fast = timed(fast, reps)
    plain = lambda y, tt, dd: core(y, tt, dd)               # no .jacobian attribute: autograd path
    t_rev = timed(lambda: velocity_jacobian(plain, x, t, d, space), 1)

    def func_jvp():
        f = lambda y: core(y, t, d)
        tang = basis.T.reshape(space.dof, 1, *space.event_shape).expand(space.dof, *x.shape)
        with torch.no_grad():
            return torch.cat([vmap(lambda v: jvp(f, (x,), (v,))[1])(tang[i:i + 16]) for i in range(0, space.dof, 16)])

    t_fj = timed(func_jvp, 1)
    j_fast = fast()
    j_rev = velocity_jacobian(plain, x, t, d, space)
    err = float((j_fast - j_rev).abs().max() / j_rev.abs().max())
    rows = [("hand-written forward mode", t_fast), ("reverse mode, dof vjps", t_rev), ("torch.func jvp + vmap", t_fj)]
    print(f"{'exact Jacobian method':28s} {'s / batch':>10s} {'x fwd+bwd':>10s} {'weights / s':>12s}")
    for name, sec in rows:
        print(f"{name:28s} {sec:10.3f} {sec / t_fb:10.1f} {args.batch / sec:12.0f}")
    print(f"forward-mode vs reverse-mode Jacobian: max relative difference {err:.1e}; "
          f"speed-up {t_rev / t_fast:.1f}x")


if __name__ == "__main__":
    main()
