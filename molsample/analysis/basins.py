"""The states of alanine dipeptide in (phi, psi): defined here once and used by every tool.

Angles are wrapped to [-pi, pi) first. The two states of the free-energy difference reported by
molsample (and by Boltzmann-generator papers) are

    phi > 0:  0 < phi < pi            (the alpha_L and C7ax basins)
    phi < 0:  everything else         (-pi <= phi <= 0: C7eq/beta and alpha_R)

and dF(phi > 0 vs phi < 0) = -log(p(phi > 0) / p(phi < 0)) in units of kT. The four basins partition the
torus (degrees): on the phi < 0 side alpha_R if -120 <= psi < 50, else C7eq/beta; on the phi > 0 side
alpha_L if 0 <= psi < 180, else C7ax.
"""
from __future__ import annotations

import math

import numpy as np

BASINS = ("C7eq/beta", "alpha_R", "alpha_L", "C7ax")

STATE_DEFINITIONS = {
    "phi_positive": "0 < phi < pi (angles wrapped to [-pi, pi)); phi < 0 is the rest",
    "basins": "phi < 0: alpha_R if -120 <= psi < 50 deg, else C7eq/beta; "
              "phi > 0: alpha_L if 0 <= psi < 180 deg, else C7ax",
}


def _wrap(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def phi_positive(phi) -> np.ndarray:
    """Indicator of the phi > 0 state (0 < phi < pi after wrapping to [-pi, pi)), angles in radians."""
    p = _wrap(phi)
    return (p > 0.0) & (p < math.pi)


def basin_indicators(phi, psi) -> dict[str, np.ndarray]:
    """Boolean indicator of each basin for angles in radians (arrays of equal shape)."""
    pos = phi_positive(phi)
    psi_d = np.degrees(_wrap(psi))
    alpha_r = ~pos & (psi_d >= -120) & (psi_d < 50)
    return {"C7eq/beta": ~pos & ~alpha_r, "alpha_R": alpha_r,
            "alpha_L": pos & (psi_d >= 0), "C7ax": pos & (psi_d < 0)}
