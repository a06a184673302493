"""Where an internal-coordinate sampler's importance weights lose their efficiency.

The Kish ESS of n draws factorises over any partition of the soft torsions into bins:

    1 / ESS = E[w^2] / E[w]^2 = (between bins) x (within bins),
    between = sum_b q_b m_b^2 / (sum_b q_b m_b)^2,     m_b = E[w | bin b],  q_b = the draws' share in b
    (m_b^2 estimated without bias, see decompose).

A between-bin factor near 1 means the proposal's torsion marginal is right (its weight is spread evenly
over the bins); what is lost within the bins is the conditional part (the near-linear coordinates given
the torsions). Bins: each histogram group of the base (the (phi, psi) pair and each rotor), and the
joint bins of all soft torsions.

    python benchmarks/ic_weight_decomposition.py systems/aldp/models/aldp-ic.pt --n 60000 [--steps K]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decompose(w: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """(ESS, between-bin factor, within-bin factor, share of draws alone in their bin), ESS = between x
    within. m_b^2 is estimated without the plug-in's upward bias sigma_b^2 / n_b (which would count noise
    in sparsely filled bins as a between-bin loss): the U-statistic (S_b^2 - sum_b w^2) / (n_b (n_b - 1))
    over bins with two or more draws; draws alone in a bin enter the within part."""
    n = len(w)
    _, inv = np.unique(labels, return_inverse=True)
    cnt = np.bincount(inv)
    s1, s2 = np.bincount(inv, w), np.bincount(inv, w * w)
    many = cnt >= 2
    m2 = np.where(many, (s1 ** 2 - s2) / np.maximum(cnt * (cnt - 1), 1), 0.0)
    q = cnt / n
    total = (w ** 2).mean() / w.mean() ** 2
    between = (q[many] * m2[many]).sum() / q[many].sum() / ((s1[many].sum() / cnt[many].sum()) ** 2)
    return 1 / total, 1 / between, between / total, float(cnt[~many].sum() / n)


def main(argv=None) -> int:
    import torch

    from molsample.coords.model import load_internal_checkpoint
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--bins", type=int, default=12, help="bins per torsion for each group")
    ap.add_argument("--joint-bins", type=int, default=6, help="bins per torsion for the joint partition")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sampler, _ = load_internal_checkpoint(args.checkpoint)
    gen = torch.Generator().manual_seed(args.seed)
    zs, lws = [], []
    with torch.no_grad():
        for start in range(0, args.n, 5000):
            d = sampler.one_step.draw(min(5000, args.n - start), gen, steps=args.steps)
            lws.append(sampler.target.log_weights(d["y"], d["log_q"]).numpy())
            zs.append(d["z1"].numpy())
    lw, z = np.concatenate(lws), np.concatenate(zs)
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise SystemExit("non-finite log weights other than -inf: the model is broken")
    k = len(sampler.base.soft)
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    w[~np.isfinite(w)] = 0.0

    def binned(cols, nb):
        lab = np.zeros(len(z), dtype=np.int64)
        for j in cols:
            lab = lab * nb + np.clip(np.floor((z[:, j] + math.pi) / (2 * math.pi) * nb).astype(int), 0, nb - 1)
        return lab

    print(f"# {args.checkpoint}: {args.n} draws, K = {args.steps}")
    print("| partition | bins | ESS | between bins | within bins | draws alone in a bin |")
    print("|---|---|---|---|---|---|")
    for group in sampler.base.groups:
        e, b, wi, alone = decompose(w, binned(group, args.bins))
        print(f"| soft torsions {list(group)} | {args.bins}^{len(group)} | {e:.3f} | {b:.3f} | {wi:.3f} | {alone:.3f} |")
    e, b, wi, alone = decompose(w, binned(range(k), args.joint_bins))
    print(f"| all {k} soft torsions | {args.joint_bins}^{k} | {e:.3f} | {b:.3f} | {wi:.3f} | {alone:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
