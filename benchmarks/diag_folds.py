"""Where a K-step deterministic map folds (det <= 0), in terms of its prior draws.

    python benchmarks/diag_folds.py CHECKPOINT [--n 131072] [--steps 1 2] [--seed 0] [--spectrum 256]
        [--minimum FRAMES]

For each K: the number of samples whose map has det <= 0 (or a non-finite Jacobian) at some step
(their exact weights are not valid), which of the K steps folds, and the fold rate by how far out
in the prior the draw lies:
the draw's radius |x_0| / s0 has a chi distribution with dof degrees of freedom, and the rows bin
the draws by that distribution's tail probability P(chi > r). If the folds sit in the prior's far
tail, the training states (a few hundred prior draws per iteration) almost never show them to the
bijectivity hinge.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import stats

from molsample.flow import pf_step
from molsample.jacobian import step_log_volume
from molsample.train import load_checkpoint

EDGES = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=131072)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spectrum", type=int, default=0, metavar="M",
                    help="also the first step's Jacobian spectrum at M draws per K")
    ap.add_argument("--minimum", metavar="FRAMES", help="also u's Hessian at the relaxed lowest-energy frame")
    args = ap.parse_args()
    exp, ckpt = load_checkpoint(args.checkpoint)
    space, s0 = exp.space, exp.prior.s0
    velocity = exp.velocity()
    print(f"# {exp.target.name}: {args.checkpoint}, {ckpt['state']['iteration']} iterations; n = {args.n} per K; "
          f"prior radius |x_0| / s0 ~ chi({space.dof})")
    head = " | ".join(f"({a:g}, {b:g}]" for a, b in zip(EDGES[:-1], EDGES[1:]))
    print(f"| K | folded | folded at step k = 0, 1, ... | folded / draws with P(chi > r) in: {head} |")
    print("|---|---|---|" + "---|" * (len(EDGES) - 1))
    for k_steps in args.steps:
        gen = torch.Generator().manual_seed(args.seed)
        tail, folded, per_step = [], [], np.zeros(k_steps, dtype=np.int64)
        for start in range(0, args.n, args.batch):
            m = min(args.batch, args.n - start)
            x = exp.prior.sample(m, gen, dtype=exp.dtype)
            r = x.reshape(m, -1).double().norm(dim=1).numpy() / s0
            tail.append(stats.chi.sf(r, space.dof))
            bad = np.zeros(m, dtype=bool)
            d = 1.0 / k_steps
            for k in range(k_steps):
                vol = step_log_volume(velocity, x, k * d, d, space, "exact", generator=gen)
                step_bad = vol.invalid.numpy()                               # as the sampler counts them
                per_step[k] += int(step_bad.sum())
                bad |= step_bad
                with torch.no_grad():
                    x = pf_step(velocity, x, k * d, d)
            folded.append(bad)
        tail, folded = np.concatenate(tail), np.concatenate(folded)
        rates = []
        for a, b in zip(EDGES[:-1], EDGES[1:]):
            sel = (tail > a) & (tail <= b)
            rates.append(f"{folded[sel].sum()} / {sel.sum()}" if sel.any() else "-")
        print(f"| {k_steps} | {folded.sum()} | {', '.join(map(str, per_step))} | " + " | ".join(rates) + " |")
    if args.spectrum:
        spectrum(exp, velocity, args.steps, args.spectrum, args.seed)
    if args.minimum:
        hessian_at_minimum(exp, args.minimum)


def hessian_at_minimum(exp, frames_path) -> None:
    from scipy.optimize import minimize

    from molsample.data import load_frames

    target, shape = exp.target, exp.target.event_shape
    x, _ = load_frames(frames_path, target)
    u0 = target.energy(torch.as_tensor(x, dtype=torch.float64)).numpy()
    start = x[int(np.argmin(u0))].reshape(-1)

    def fun(v):
        xt = torch.as_tensor(v, dtype=torch.float64).reshape(1, *shape)
        return float(target.energy(xt)[0]), -target.score(xt)[0].reshape(-1).double().numpy()

    res = minimize(fun, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-8, "maxiter": 10000})
    hess = torch.autograd.functional.hessian(
        lambda v: target.energy(v.reshape(1, *shape))[0], torch.as_tensor(res.x, dtype=torch.float64))
    ev = np.linalg.eigvalsh(hess.numpy())
    scale = max(1e-6 * abs(ev).max(), 1e-8)
    vib = ev[ev > scale]
    lo, hi = 1 / np.sqrt(vib.max()), 1 / np.sqrt(vib.min())
    p_lo, p_hi = exp.prior.spread_range()
    print(f"\nu's Hessian at the relaxed lowest-energy frame of {frames_path} (u {u0.min():.3f} -> {res.fun:.3f} kT): "
          f"{(abs(ev) <= scale).sum()} zero modes, {len(vib)} vibrational, eigenvalues {vib.min():.4g} to "
          f"{vib.max():.4g}; thermal spread 1 / sqrt(eigenvalue) {lo:.4g} to {hi:.4g}. The prior's spread per "
          f"direction: {p_lo:.4g} to {p_hi:.4g}; a map from the prior contracts the stiffest vibration by about "
          f"{lo / p_lo:.3g} (thermal / narrowest prior spread) to {lo / p_hi:.3g} (thermal / widest)")
    if (ev < -scale).any():
        print(f"  (not a minimum: {(ev < -scale).sum()} negative eigenvalues, lowest {ev.min():.4g})")


def spectrum(exp, velocity, steps, m, seed) -> None:
    print(f"\nFirst step's Jacobian J at {m} prior draws (medians; sym(J) = (J + J^T) / 2):")
    print("| K | det | draws | with 0 / 1 / 2 / 3 / >= 4 negative real eigenvalues | smallest singular value "
          "| 2nd smallest | lambda_min(sym J) | largest singular value | negative real eigenvalues: median / min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k_steps in steps:
        gen = torch.Generator().manual_seed(seed)
        x = exp.prior.sample(m, gen, dtype=exp.dtype)
        vol = step_log_volume(velocity, x, 0.0, 1.0 / k_steps, exp.space, "exact")
        jac = vol.jacobian.double()
        real = torch.linalg.eigvals(jac).real.numpy()
        neg = (real < 0).sum(1)
        sv = torch.linalg.svdvals(jac).numpy()                               # descending
        sym = torch.linalg.eigvalsh(0.5 * (jac + jac.transpose(1, 2)))[:, 0].numpy()
        positive = vol.sign.numpy() > 0
        for label, sel in (("> 0", positive), ("<= 0", ~positive)):
            if not sel.any():
                continue
            counts = np.bincount(np.minimum(neg[sel], 4), minlength=5)
            negs = real[sel][real[sel] < 0]
            neg_text = f"{np.median(negs):.3f} / {negs.min():.3f}" if negs.size else "-"
            print(f"| {k_steps} | {label} | {sel.sum()} | {' / '.join(map(str, counts))} | {np.median(sv[sel, -1]):.3f} "
                  f"| {np.median(sv[sel, -2]):.3f} | {np.median(sym[sel]):.3f} | {np.median(sv[sel, 0]):.2f} | {neg_text} |")


if __name__ == "__main__":
    main()
