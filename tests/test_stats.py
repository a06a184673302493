"""Distribution distances against hand-computed values."""
import math

import numpy as np
import pytest

from molsample.analysis.stats import histogram_kl, torus_w2, wasserstein_1d


def test_histogram_kl_by_hand():
    p = np.array([0.1, 0.1, 0.1, 0.6])            # bins [0,0.5), [0.5,1]: P = (3/4, 1/4)
    q = np.array([0.2, 0.7])                      # Q = (1/2, 1/2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert histogram_kl(p, q, bins=[np.array([0, 0.5, 1.0])]) == pytest.approx(expected)
    assert histogram_kl(p, p, bins=[np.array([0, 0.5, 1.0])]) == 0.0


def test_weighted_histograms_with_equal_weights_equal_unweighted():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(500, 2)), rng.normal(0.3, 1, size=(400, 2))
    bins = [np.linspace(-4, 4, 9)] * 2
    assert histogram_kl(p, q, bins) == pytest.approx(histogram_kl(p, q, bins, np.full(500, 3.0), np.full(400, 0.1)))


def test_wasserstein_1d_by_hand_and_weights():
    assert wasserstein_1d([0.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert wasserstein_1d([0.0, 1.0], [0.0, 3.0], p=2) == pytest.approx(math.sqrt(2.0))
    # weights: x = 0 (w 3/4), 4 (w 1/4) vs the point 1: W1 = 3/4 * 1 + 1/4 * 3
    assert wasserstein_1d([0.0, 4.0], [1.0], wx=[3, 1]) == pytest.approx(1.5)


def test_torus_w2_uses_the_periodic_distance():
    a = np.array([[math.pi - 0.1, 0.0]])
    b = np.array([[-math.pi + 0.1, 0.0]])
    assert torus_w2(a, b, n=10) == pytest.approx(0.2)
    rng = np.random.default_rng(1)
    x = np.angle(np.exp(1j * (3.0 + 0.3 * rng.normal(size=(20000, 2)))))     # wraps across +-pi
    shifted = np.angle(np.exp(1j * (x + np.array([0.3, -0.4]))))
    assert torus_w2(x, shifted, n=1000) == pytest.approx(0.5, abs=0.05)     # a translation by |(0.3, -0.4)|
    assert torus_w2(x, x, n=1000) < 0.1
