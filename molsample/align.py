"""Rigid alignment and optimal-transport coupling of particle configurations (torch): the minibatch
OT coupling of prior and data frames, Kabsch rotations, the rotation (and permutation) alignment of
each data frame to its prior partner used by equivariant flow matching, and the aligned squared
distance (rotations, reflections and relabellings) behind the equivariant W2 of analysis.particles."""
from __future__ import annotations

import numpy as np
import torch


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Reorder prior samples x0 to the minibatch optimal-transport coupling with x1 (squared
    Euclidean cost, exact assignment). Any coupling keeps the marginals, so flow matching stays
    valid; OT makes the paths straighter, which is what large steps need."""
    from scipy.optimize import linear_sum_assignment
    cost = torch.cdist(x0.reshape(x0.shape[0], -1).double(), x1.reshape(x1.shape[0], -1).double()).pow(2)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(cols), dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return x0[perm.to(x0.device)]


def kabsch_rotation(a: torch.Tensor, b: torch.Tensor, reflections: bool = False) -> torch.Tensor:
    """Proper rotations R (B, s, s), det +1, minimising sum_i |a_i - b_i R|^2 for centred point sets
    a, b : (B, N, s). Reflections are excluded, so a chiral configuration stays chiral; with
    ``reflections`` the best orthogonal map (det +-1) is returned instead."""
    u, _, vt = torch.linalg.svd(b.transpose(1, 2) @ a)
    if reflections:
        return u @ vt
    sign = torch.sign(torch.linalg.det(u @ vt))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    flip = torch.ones(a.shape[0], a.shape[-1], dtype=a.dtype, device=a.device)
    flip[:, -1] = sign
    return (u * flip[:, None, :]) @ vt


def _principal_rotations(a: torch.Tensor, b: torch.Tensor, reflections: bool = False) -> torch.Tensor:
    """The proper rotations taking b's principal axes onto a's, one per admissible choice of axis
    signs: (2^(s-1), B, s, s) for point sets a, b : (B, N, s); with ``reflections`` every choice of
    signs, (2^s, B, s, s)."""
    _, va = torch.linalg.eigh(a.transpose(1, 2) @ a)
    _, vb = torch.linalg.eigh(b.transpose(1, 2) @ b)
    s = a.shape[-1]
    signs = torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=a.dtype)] * s).reshape(-1, s)
    r = vb[None] @ torch.diag_embed(signs)[:, None] @ va.transpose(1, 2)[None]       # (2^s, B, s, s)
    if reflections:
        return r
    proper = torch.linalg.det(r) > 0                                                  # half of them per sample
    first = torch.argsort((~proper).to(torch.int8), dim=0, stable=True)[: 2 ** (s - 1)]
    return torch.gather(r, 0, first[..., None, None].expand(-1, -1, s, s))


def _assign(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per sample, the relabelling idx of b minimising sum_i |a_i - (b R)_idx_i|^2 (Hungarian)."""
    from scipy.optimize import linear_sum_assignment
    cost = torch.cdist(a, b @ r).pow(2).cpu().numpy()
    return torch.as_tensor(np.stack([linear_sum_assignment(c)[1] for c in cost]))


def align_pairs(x0: torch.Tensor, x1: torch.Tensor, permute: bool, n_iter: int = 5) -> torch.Tensor:
    """Each configuration x1[k] (B, N, s) rotated, and with ``permute`` its identical particles
    relabelled, to lie close to its partner x0[k] (equivariant optimal-transport flow matching, Klein,
    Kraemer and Noe 2023). Without ``permute``: the optimal proper rotation (Kabsch). With it: from each
    proper rotation taking x1's principal axes onto x0's, one Hungarian assignment and Kabsch rotation;
    the closest of these is refined by up to ``n_iter`` - 1 more alternations (a local search: an upper
    estimate of the true minimum).

    The result is x1[k] moved within its orbit of the target's symmetry group (proper rotations, and
    permutations with ``permute``) by a move that depends on x0[k] equivariantly: every step commutes
    with rotating and relabelling x0 (the principal-axes starts included). The prior is invariant under
    the same group, so the moved x1 has the target's distribution again: the coupling changes, neither
    marginal does, and flow matching stays valid while the paths shorten. x1's centroid is kept.
    Computed on the CPU whatever the inputs' device (the assignments run in scipy there anyway; the
    point sets are small), and returned on x1's device."""
    a = x0.detach().double().cpu()
    a = a - a.mean(1, keepdim=True)
    b = x1.detach().double().cpu()
    centroid = b.mean(1, keepdim=True)
    b = b - centroid

    def take(z, idx):
        return torch.gather(z, 1, idx[..., None].expand_as(z))

    if not permute:
        best = b @ kabsch_rotation(a, b)
    else:
        starts = _principal_rotations(a, b)                       # (S, B, s, s)
        n_s, n_b = starts.shape[:2]
        aa, bb = a.repeat(n_s, 1, 1), b.repeat(n_s, 1, 1)          # start-major rows
        idx = _assign(aa, bb, starts.reshape(n_s * n_b, *starts.shape[2:]))
        r = kabsch_rotation(aa, take(bb, idx))
        cost = (take(bb, idx) @ r - aa).pow(2).sum((1, 2)).reshape(n_s, n_b)
        pick = cost.argmin(0) * n_b + torch.arange(n_b)
        idx, r = idx[pick], r[pick]
        for _ in range(n_iter - 1):
            new = _assign(a, b, r)
            if torch.equal(new, idx):
                break
            idx = new
            r = kabsch_rotation(a, take(b, idx))
        best = take(b, idx) @ r
    return (best + centroid).to(dtype=x1.dtype, device=x1.device)


def aligned_sq_distances(a: torch.Tensor, b: torch.Tensor, reflections: bool = True, n_iter: int = 8) -> torch.Tensor:
    """Per pair k of point sets a[k], b[k] (B, N, s) of identical particles: min over orthogonal maps R
    (proper rotations only without ``reflections``) and relabellings P of sum_i |a_i - (P b R)_i|^2,
    centroids removed. From each principal-axes start, alternating Hungarian assignment and Kabsch
    until the assignment repeats (at most ``n_iter`` rounds); the best over the starts, an upper
    estimate of the true minimum (exact for transformed copies with distinct principal moments).
    Returns (B,) float64, on the CPU."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)

    def take(z, idx):
        return torch.gather(z, 1, idx[..., None].expand_as(z))

    best = torch.full((a.shape[0],), float("inf"), dtype=torch.float64)
    for r in _principal_rotations(a, b, reflections):           # (B, s, s) per start
        idx, done = None, torch.zeros(a.shape[0], dtype=torch.bool)
        for _ in range(n_iter):
            new = _assign(a, b, r)
            r_new = kabsch_rotation(a, take(b, new), reflections)
            if idx is not None:
                done = done | (new == idx).all(1)
                keep = done[:, None]
                new = torch.where(keep, idx, new)
                r_new = torch.where(keep[..., None], r, r_new)
            idx, r = new, r_new
            if bool(done.all()):
                break
        best = torch.minimum(best, (a - take(b, idx) @ r).pow(2).sum((1, 2)))
    return best
