"""Equivariant W2 and its alignment against brute force on tiny systems."""
import itertools

import numpy as np

from molsample.analysis.particles import aligned_sq_distance, equivariant_w2


def brute_force_2d(a, b, n_angles=3600):
    a, b = a - a.mean(0), b - b.mean(0)
    best = np.inf
    for perm in itertools.permutations(range(len(b))):
        bp = b[list(perm)]
        for th in np.linspace(0, 2 * np.pi, n_angles, endpoint=False):
            c, s = np.cos(th), np.sin(th)
            for refl in (np.eye(2), np.diag([1.0, -1.0])):
                r = refl @ np.array([[c, -s], [s, c]])
                best = min(best, ((a - bp @ r) ** 2).sum())
    return best


def test_alignment_matches_brute_force_over_permutations_rotations_and_reflections():
    rng = np.random.default_rng(3)
    for _ in range(4):
        a, b = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
        fast = aligned_sq_distance(a, b)
        slow = brute_force_2d(a, b)
        assert slow - 1e-4 <= fast <= slow + 1e-4


def test_equivariant_w2_is_invariant_and_zero_for_transformed_copies():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5, 3))
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    y = np.stack([xi[rng.permutation(5)] @ q + rng.normal(size=3) for xi in x])
    assert equivariant_w2(x, y, n=30) < 1e-6
    z = 1.5 * x
    assert equivariant_w2(x, z, n=30) > 0.1
