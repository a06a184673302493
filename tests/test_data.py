"""molsample.data: reference frames read, weighted and mirrored."""
import numpy as np
import pytest
import torch

from molsample.data import FrameSampler, load_frames
from molsample.flow import Space
from molsample.io import TopologyMismatchError
from molsample.targets import load_target

from conftest import ROOT

UMBRELLA = ROOT / "systems" / "aldp" / "reference" / "aldp_umbrella_2d_30x18.npz"


def test_frame_sampler_weights_and_mirror():
    space = Space((3, 3), com_free=True)
    x = np.random.default_rng(0).normal(size=(3, 3, 3))
    log_w = np.log([0.7, 0.2, 0.1])
    g = torch.Generator().manual_seed(0)
    for power, expected in [(1.0, [0.7, 0.2, 0.1]), (0.0, [1 / 3] * 3), (0.5, np.sqrt([0.7, 0.2, 0.1]))]:
        fs = FrameSampler(x, log_w, space, power=power, dtype=torch.float64)
        got = fs.sample(20000, g)
        counts = np.array([(got - fs.x[i]).abs().amax((1, 2)).lt(1e-12).sum() for i in range(3)]) / 20000
        assert np.allclose(counts, np.asarray(expected) / np.sum(expected), atol=0.015)
    fs = FrameSampler(x, np.zeros(3), space, mirror=True, dtype=torch.float64)
    got = fs.sample(4000, g)
    mirrored = fs.x.clone()
    mirrored[..., 0] *= -1
    is_mirror = torch.stack([(got - mirrored[i]).abs().amax((1, 2)) < 1e-12 for i in range(3)]).any(0)
    assert 0.45 < is_mirror.double().mean() < 0.55
    assert got.mean(1).abs().max() < 1e-12                                  # centred


def test_load_frames_checks_shape(tmp_path):
    target = load_target("aldp")
    x, lw = load_frames(UMBRELLA, target)
    assert x.shape[1:] == (22, 3) and lw.shape == (len(x),)
    np.savez(tmp_path / "bad.npz", xyz=np.zeros((4, 13, 3)))
    with pytest.raises(TopologyMismatchError, match="aldp"):
        load_frames(tmp_path / "bad.npz", target)
    np.savez(tmp_path / "nan.npz", xyz=np.full((2, 22, 3), np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        load_frames(tmp_path / "nan.npz", target)
    with pytest.raises(FileNotFoundError, match="molsample umbrella"):
        load_frames(tmp_path / "missing.npz", target)
