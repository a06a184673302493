"""Estimators from importance weights: log Z, ELBO, EUBO, ESS, SNIS expectations, free energies.

All take log weights log w = log pi~(x) - log q(x) (M,) and return typed results with standard
errors (bootstrap over samples unless stated). Non-finite log weights: -inf is a zero weight and
is kept; NaN is an error upstream and is counted and excluded here (``n_nonfinite``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """value with its standard error; n samples used, n_nonfinite excluded (NaN)."""
    value: float
    stderr: float
    n: int = 0
    n_nonfinite: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _clean(log_w) -> tuple[np.ndarray, int]:
    a = np.asarray(log_w, dtype=np.float64).ravel()
    bad = np.isnan(a) | (a == np.inf)
    return a[~bad], int(bad.sum())


def _logmeanexp(a: np.ndarray, axis=-1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.mean(np.exp(a - m), axis=axis))


def _bootstrap(stat, arrays: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> float:
    m = len(arrays[0])
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, m, m)
        vals.append(stat(*[a[idx] for a in arrays]))
    vals = np.asarray(vals)
    vals = vals[np.isfinite(vals)]
    return float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")


def log_z(log_w, n_boot: int = 200, rng: np.random.Generator | None = None) -> Estimate:
    """log of Z_hat = mean(w). Z_hat is unbiased; log Z_hat is low on average (Jensen)."""
    a, bad = _clean(log_w)
    rng = rng or np.random.default_rng(0)
    return Estimate(float(_logmeanexp(a)), _bootstrap(_logmeanexp, [a], n_boot, rng), len(a), bad)


def elbo(log_w) -> Estimate:
    """mean(log w) <= log Z, with the standard error of the mean."""
    a, bad = _clean(log_w)
    return Estimate(float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))), len(a), bad)


def eubo(log_w_at_target_samples) -> Estimate:
    """E_pi[log w] >= log Z, from log weights evaluated at exact / reference target samples."""
    return elbo(log_w_at_target_samples)


def ess(log_w, n_boot: int = 200, rng: np.random.Generator | None = None) -> Estimate:
    """Normalised Kish effective sample size (sum w)^2 / (M sum w^2), in (0, 1]."""
    a, bad = _clean(log_w)
    rng = rng or np.random.default_rng(0)

    def kish(x):
        return float(np.exp(2 * _logmeanexp(x) - _logmeanexp(2 * x)))

    return Estimate(kish(a), _bootstrap(kish, [a], n_boot, rng), len(a), bad)


def snis(log_w, values, n_boot: int = 200, rng: np.random.Generator | None = None) -> Estimate:
    """Self-normalised importance-sampling estimate of E_pi[f] from f values (M,)."""
    a, bad = _clean(log_w)
    keep = ~(np.isnan(np.asarray(log_w, dtype=float).ravel()) | (np.asarray(log_w, dtype=float).ravel() == np.inf))
    f = np.asarray(values, dtype=np.float64).ravel()[keep]
    rng = rng or np.random.default_rng(0)

    def stat(x, y):
        top = x.max()
        if not np.isfinite(top):             # every weight zero (a bootstrap draw of zero-weight samples)
            return math.nan
        w = np.exp(x - top)
        return float((w * y).sum() / w.sum())

    return Estimate(stat(a, f), _bootstrap(stat, [a, f], n_boot, rng), len(a), bad)


def delta_f(log_w, in_a, in_b, n_boot: int = 200, rng: np.random.Generator | None = None) -> Estimate:
    """Free-energy difference F_B - F_A = -log(sum_B w / sum_A w), in kT.

    in_a, in_b : boolean (M,) state indicators.
    """
    raw = np.asarray(log_w, dtype=np.float64).ravel()
    keep = ~(np.isnan(raw) | (raw == np.inf))
    a = raw[keep]
    ia, ib = np.asarray(in_a, bool).ravel()[keep], np.asarray(in_b, bool).ravel()[keep]
    rng = rng or np.random.default_rng(0)

    def stat(x, ma, mb):
        if not ma.any() or not mb.any():
            return np.inf if not mb.any() else -np.inf
        return float(-(_logmeanexp(np.where(mb, x, -np.inf)) - _logmeanexp(np.where(ma, x, -np.inf))))

    return Estimate(stat(a, ia, ib), _bootstrap(stat, [a, ia, ib], n_boot, rng), len(a), int((~keep).sum()))


def log_odds(p: float) -> float:
    """-log(p / (1 - p)): the free-energy difference F_B - F_A (kT) of a state B with population p against the
    rest; +inf at p = 0, -inf at p = 1, NaN stays NaN."""
    if math.isnan(p):
        return math.nan
    if p <= 0:
        return math.inf
    if p >= 1:
        return -math.inf
    return -math.log(p / (1 - p))


def delta_f_from_population(p: float, dp: float, n: int = 0) -> Estimate:
    """dF = F_B - F_A = -log(p / (1 - p)) for p = P(B) with error dp, carried by the delta method,
    dF error = dp / (p (1 - p)) (NaN where p is 0, 1 or NaN). Every tool's dF from a population is this one."""
    inside = 0 < p < 1
    return Estimate(log_odds(p), dp / (p * (1 - p)) if inside else math.nan, n)


def summarise(log_w, n_boot: int = 200, seed: int = 0) -> dict:
    """log Z, ELBO and ESS of a set of log weights as a dict of dicts (for JSON reports)."""
    rng = np.random.default_rng(seed)
    return {"log_z": log_z(log_w, n_boot, rng).as_dict(), "elbo": elbo(log_w).as_dict(),
            "ess": ess(log_w, n_boot, rng).as_dict()}
