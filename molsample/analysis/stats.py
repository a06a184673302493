"""Distances between (weighted) distributions of observables: histogram KL, W1/W2 in 1D, W2 on the torus."""
from __future__ import annotations

import numpy as np

KL_FLOOR = 1e-10


def weights_from_log(log_w):
    """Relative weights exp(log w - max) with non-finite entries as zero; None stays None (equal weights)."""
    if log_w is None:
        return None
    w = np.exp(log_w - np.max(log_w[np.isfinite(log_w)]))
    return np.where(np.isfinite(w), w, 0.0)


def _norm_w(w, n):
    w = np.ones(n) if w is None else np.asarray(w, dtype=float)
    return w / w.sum()


def resample_indices(rng: np.random.Generator, m: int, n: int, w=None, replace_unweighted: bool = True) -> np.ndarray:
    """n indices into m items drawn with probability proportional to the weights w (multinomial, with
    replacement); without weights uniformly, with replacement, or without it (a subsample of min(n, m)) if
    ``replace_unweighted`` is False."""
    if w is None and not replace_unweighted:
        return rng.choice(m, size=min(n, m), replace=False)
    return rng.choice(m, size=n, replace=True, p=_norm_w(w, m))


def histogram_kl(p_samples, q_samples, bins, p_weights=None, q_weights=None) -> float:
    """KL(P || Q) between binned distributions (P the reference). Bins where P is empty contribute 0;
    an empty Q bin gets probability KL_FLOOR = 1e-10 (so the value is finite but large).

    p_samples, q_samples : (n,) for 1D or (n, 2) for 2D; bins as for numpy.histogramdd.
    """
    p_s = np.atleast_2d(np.asarray(p_samples).T).T
    q_s = np.atleast_2d(np.asarray(q_samples).T).T
    hp, _ = np.histogramdd(p_s, bins=bins, weights=_norm_w(p_weights, len(p_s)))
    hq, _ = np.histogramdd(q_s, bins=bins, weights=_norm_w(q_weights, len(q_s)))
    hp, hq = hp / hp.sum(), hq / hq.sum()
    m = hp > 0
    return float(np.sum(hp[m] * (np.log(hp[m]) - np.log(np.maximum(hq[m], KL_FLOOR)))))


def wasserstein_1d(x, y, wx=None, wy=None, p: int = 1) -> float:
    """W_p between two weighted 1D samples, by integrating |F^-1 - G^-1|^p over quantiles
    (W2 returned as the square root, a distance, not its square)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    wx, wy = _norm_w(wx, len(x)), _norm_w(wy, len(y))
    ix, iy = np.argsort(x), np.argsort(y)
    x, y, wx, wy = x[ix], y[iy], wx[ix], wy[iy]
    cx, cy = np.cumsum(wx), np.cumsum(wy)
    levels = np.unique(np.concatenate([[0.0], cx, cy]))
    levels = levels[levels <= 1.0]
    mids = 0.5 * (levels[1:] + levels[:-1])
    qx = x[np.minimum(np.searchsorted(cx, mids), len(x) - 1)]
    qy = y[np.minimum(np.searchsorted(cy, mids), len(y) - 1)]
    val = np.sum(np.diff(levels) * np.abs(qx - qy) ** p)
    return float(val ** (1.0 / p))


def torus_w2(a, b, wa=None, wb=None, n: int = 1500, seed: int = 0) -> float:
    """W2 on the torus between two sets of angle pairs (radians), each (m, 2).

    Weighted sets are resampled (multinomial) to ``n`` equal-weight points, then the exact optimal
    assignment under the periodic squared distance is found (scipy's linear_sum_assignment): the
    W2 of the two n-point empirical measures, an estimate with O(n^-1/2)-scale upward bias.
    """
    from scipy.optimize import linear_sum_assignment
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, float), np.asarray(b, float)
    ia, ib = resample_indices(rng, len(a), n, wa), resample_indices(rng, len(b), n, wb)
    d = np.abs(a[ia][:, None, :] - b[ib][None, :, :])
    d = np.minimum(d, 2 * np.pi - d)
    cost = (d**2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))
