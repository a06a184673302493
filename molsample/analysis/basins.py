"""Conformational basins of alanine dipeptide in (phi, psi).

A partition of the torus (degrees): phi < 0: alpha_R if -120 <= psi < 50, else C7eq/beta;
phi >= 0: alpha_L if psi >= 0 (0 <= psi < 180), else C7ax. The standard free-energy difference of
Boltzmann-generator papers is between phi > 0 and phi < 0.
"""
from __future__ import annotations

import numpy as np

BASINS = ("C7eq/beta", "alpha_R", "alpha_L", "C7ax")


def basin_indicators(phi: np.ndarray, psi: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean indicator of each basin for angles in radians (arrays of equal shape)."""
    phi_d, psi_d = np.degrees(phi), np.degrees(psi)
    neg = phi_d < 0
    alpha_r = neg & (psi_d >= -120) & (psi_d < 50)
    return {"C7eq/beta": neg & ~alpha_r, "alpha_R": alpha_r,
            "alpha_L": ~neg & (psi_d >= 0), "C7ax": ~neg & (psi_d < 0)}
