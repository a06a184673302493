"""The data-assisted route: frames, weighting, mirroring, OT coupling, flow matching, and a tiny
train -> sample -> compare run on alanine dipeptide."""
import json

import numpy as np
import pytest
import torch

from molsample.testing import random_orthogonal

from molsample import align, losses
from molsample.cli import main
from molsample.data import FrameSampler, load_frames
from molsample.flow import DirectVelocity, Space
from molsample.io import TopologyMismatchError
from molsample.targets import load_target

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-aldp-data.yaml"
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


def test_ot_coupling_is_a_permutation_that_lowers_the_cost():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(64, 4, 3, generator=g), torch.randn(64, 4, 3, generator=g) + 1.0
    y0 = align.ot_coupling(x0, x1)
    assert torch.equal(torch.sort(y0.reshape(64, -1), dim=0)[0], torch.sort(x0.reshape(64, -1), dim=0)[0])
    assert (y0 - x1).pow(2).sum() < (x0 - x1).pow(2).sum()


def _random_rotations(n, g):
    return random_orthogonal(g, 3, batch=n)                            # Haar on SO(3)


def _sorted_pair_distances(x):
    return torch.sort(torch.cdist(x, x).reshape(x.shape[0], -1), dim=1)[0]


@pytest.mark.parametrize("permute", [False, True])
def test_align_pairs_moves_within_the_orbit_and_shortens_the_coupling(permute):
    g = torch.Generator().manual_seed(3)
    n = 6
    x0 = torch.randn(64, n, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(1, keepdim=True)
    # x1: a rotated (and relabelled) copy of x0 plus small noise; alignment must undo the move
    rot = _random_rotations(64, g)
    perm = (torch.stack([torch.randperm(n, generator=g) for _ in range(64)]) if permute
            else torch.arange(n).expand(64, n))
    noisy = x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x1 = torch.gather(noisy @ rot, 1, perm[..., None].expand(-1, -1, 3)) + 2.0      # off-centre on purpose
    out = align.align_pairs(x0, x1, permute=permute)
    assert torch.allclose(out.mean(1), x1.mean(1))                                  # centroid kept
    assert torch.allclose(_sorted_pair_distances(out), _sorted_pair_distances(x1))  # same shape (orbit)
    c_in, c_out = x1 - x1.mean(1, keepdim=True), out - out.mean(1, keepdim=True)
    if not permute:                                                             # a proper rotation of x1
        r = torch.linalg.lstsq(c_in, c_out).solution
        assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-8)
        assert torch.allclose(torch.linalg.det(r), torch.ones(64, dtype=torch.float64))
    assert (out - 2.0 - noisy).pow(2).sum((1, 2)).max() < 0.05**2 * 3 * n * 4       # recovered up to the noise
    assert (out - 2.0 - x0).pow(2).sum() < 0.2 * (x1 - 2.0 - x0).pow(2).sum()


def test_align_pairs_keeps_the_target_distribution():
    # data: the orbit of ONE asymmetric configuration c under rotations and relabelling (an invariant target).
    # Aligned to isotropic prior partners, particle 0 must still be each of c's particles equally often and
    # point in no preferred direction; a start that favoured the given labels would break both.
    g = torch.Generator().manual_seed(4)
    n, m = 5, 8000
    c = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 1.6, 0], [0, 0, 2.3], [1.1, 1.2, 1.3]], dtype=torch.float64)
    c = c - c.mean(0)
    x1 = c.expand(m, n, 3).clone()
    x0 = torch.randn(m, n, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(1, keepdim=True)
    out = align.align_pairs(x0, x1, permute=True)
    which = torch.cdist(out[:, 0:1, :].norm(dim=-1, keepdim=True), c.norm(dim=-1)[:, None]).squeeze(1).argmin(-1)
    share = torch.bincount(which, minlength=n).double() / m
    assert torch.allclose(share, torch.full((n,), 1.0 / n, dtype=torch.float64), atol=0.015), share
    assert out[:, 0, :].mean(0).abs().max() < 0.05
    cov = torch.cov(out[:, 0, :].T)
    assert torch.allclose(cov, cov.diagonal().mean() * torch.eye(3, dtype=torch.float64), atol=0.1)


def test_align_pairs_is_equivariant_in_the_prior_partner():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(16, 7, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(1, keepdim=True)
    x1 = torch.randn(16, 7, 3, generator=g, dtype=torch.float64)
    x1 = x1 - x1.mean(1, keepdim=True)
    rot = _random_rotations(16, g)
    perm = torch.stack([torch.randperm(7, generator=g) for _ in range(16)])
    moved = torch.gather(x0 @ rot, 1, perm[..., None].expand(-1, -1, 3))
    a = align.align_pairs(x0, x1, permute=True)
    b = align.align_pairs(moved, x1, permute=True)
    assert torch.allclose(torch.gather(a @ rot, 1, perm[..., None].expand(-1, -1, 3)), b, atol=1e-9)


def test_flow_matching_loss_is_zero_for_the_exact_conditional_velocity():
    # with a single data point x1 and a point-mass coupling, the exact velocity field is (x1 - x_t) / (1 - t)
    x1 = torch.randn(1, 5, dtype=torch.float64).expand(8, 5)
    x0 = torch.randn(8, 5, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.9
    exact = DirectVelocity(lambda x, tt, d: (x1 - x) / (1 - tt[:, None]))
    assert losses.flow_matching_loss(exact, x0, x1, t, 0.1) < 1e-24
    assert losses.flow_matching_loss(DirectVelocity(lambda x, tt, d: 0 * x), x0, x1, t, 0.1) > 0.1


def test_cli_data_route_train_sample_compare(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(TINY), "--out", str(out), "--quiet"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(np.isfinite(r["fm"]) for r in log) and "sd" in log[-1] and "vol" in log[-1]
    samples = tmp_path / "s.npz"
    assert main(["sample", str(out / "checkpoint.pt"), "--n", "40", "--steps", "1", "--out", str(samples)]) == 0
    with np.load(samples) as z:
        assert z["x"].shape == (40, 22, 3) and np.isfinite(z["log_q"]).all()
        assert np.abs(z["x"].mean(1)).max() < 1e-5
    capsys.readouterr()
    assert main(["compare", str(samples), "--reference", str(UMBRELLA), "--out", str(tmp_path / "cmp"),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["sample"]["fraction_folded_D_to_L"] <= 1.0
    assert metrics["sample"]["n"] == 40


def test_quickstart_pipeline_on_a_tiny_checkpoint(tmp_path, capsys):
    assert main(["train", str(TINY), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = tmp_path / "qs"
    assert main(["export-model", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").stat().st_size < (tmp_path / "run" / "checkpoint.pt").stat().st_size
    assert main(["quickstart", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out),
                 "--n", "600", "--min-weights", "300", "--budget-seconds", "0", "--quiet"]) == 0
    meta = json.loads((out / "quickstart.json").read_text())
    assert meta["n_drawn"] == 600 and meta["n"] == 512            # the minimum, rounded up to whole batches
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (512, 22, 3) and np.isfinite(z["log_q"]).all()
    report = (out / "report.md").read_text()
    assert "exact importance weights for 512" in report and "vs_md/" in report and "vs_reference/" in report
    assert (out / "vs_md" / "metrics.json").is_file() and (out / "vs_reference" / "metrics.json").is_file()
    ref = json.loads((out / "vs_reference" / "metrics.json").read_text())["reference"]
    assert ref["kind"] == "umbrella"                       # the system's settled reference


def test_quickstart_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main(["quickstart", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "configs/aldp-ic.yaml" in capsys.readouterr().err


def test_one_step_reverse_kl_uses_the_exact_weights_of_the_sampler():
    from molsample.build import build
    from molsample.config import ExperimentConfig
    from molsample.sampler import integrate
    exp = build(ExperimentConfig.load(TINY))
    exp = type(exp)(**{**vars(exp), "model": exp.model.double(), "dtype": torch.float64})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in exp.model.out.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x0 = exp.prior.sample(6, g, dtype=torch.float64)
    loss, log_w, step = losses.one_step_reverse_kl(exp.velocity(), exp.prior, exp.target, x0, cap=1e30)
    x, log_q, bad, *_ = integrate(exp.velocity(), exp.prior, x0, 1, "exact")
    u = exp.target.energy(x)
    assert torch.allclose(log_w, -u - log_q, rtol=1e-9, atol=1e-7)
    assert torch.isclose(loss, (u + log_q).mean(), rtol=1e-9)
    loss.backward()
    grads = [p.grad for p in exp.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_regularised_energy_caps_smoothly():
    u = torch.tensor([-5.0, 10.0, 1e3, 1e8], dtype=torch.float64)
    r = losses.regularised_energy(u, 100.0)
    assert torch.equal(r[:2], u[:2]) and torch.isclose(r[2], 100 + torch.log1p(torch.tensor(900.0, dtype=torch.float64)))
    assert r[3] < 120


def test_shipped_cartesian_model_loads_and_is_small():
    from molsample.train import load_checkpoint
    path = ROOT / "systems" / "aldp" / "models" / "aldp-onestep.pt"
    assert path.is_file() and path.stat().st_size < 5e6
    exp, ckpt = load_checkpoint(path)
    assert exp.target.name == "aldp" and exp.route == "data" and ckpt["state"]["iteration"] > 0
    flat = ckpt["config"]["train"]          # written before train: had sections: its flat keys are read into them
    assert "sd_weight" in flat and isinstance(flat["lr"], float)
    train, old_data = exp.config.train, ckpt["config"]["data"]     # (its KL keys were data: keys then)
    assert (train.lr.value, train.distill.weight, train.distill.batch, train.distill.ramp, train.distill.volume_weight,
            train.kl.weight, train.kl.batch) == (flat["lr"], flat["sd_weight"], flat["sd_batch"], flat["sd_ramp"],
                                                 flat["vol_weight"], old_data["kl_weight"], old_data["kl_batch"])
    x = exp.prior.sample(4, torch.Generator().manual_seed(0), dtype=exp.dtype)
    with torch.no_grad():
        y = x + exp.velocity()(x, 0.0, 1.0)
    assert y.shape == (4, 22, 3) and torch.isfinite(y).all() and y.mean(1).abs().max() < 1e-5


def test_align_option_checks_the_system_and_trains(tmp_path):
    from molsample.build import build
    from molsample.config import ExperimentConfig
    from molsample.train import make_trainer
    cfg = ExperimentConfig.load(TINY, ["data.align=rotation-permutation"])
    with pytest.raises(ValueError, match="not interchangeable"):
        make_trainer(build(cfg), tmp_path / "a", progress=False)
    cfg = ExperimentConfig.load(TINY, ["data.align=rotation", "train.iterations=2"])
    state = make_trainer(build(cfg), tmp_path / "b", progress=False).run()
    assert state.iteration == 2 and state.nonfinite_total == 0


@pytest.mark.cuda
@pytest.mark.parametrize("permute", [False, True])
def test_align_pairs_on_cuda_matches_cpu(permute):
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(16, 6, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(16, 6, 3, generator=g, dtype=torch.float64)
    out = align.align_pairs(x0.cuda(), x1.cuda().float(), permute=permute)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.allclose(out.cpu().double(), align.align_pairs(x0, x1, permute=permute), atol=1e-5)


@pytest.mark.cuda
def test_data_route_trains_on_cuda(tmp_path):
    from molsample.build import build
    from molsample.config import ExperimentConfig
    from molsample.train import load_checkpoint, make_trainer
    cfg = ExperimentConfig.load(TINY, ["data.align=rotation", "train.iterations=3"])
    state = make_trainer(build(cfg, "cuda"), tmp_path / "c", progress=False).run()
    assert state.iteration == 3 and state.nonfinite_total == 0
    exp, _ = load_checkpoint(tmp_path / "c" / "checkpoint.pt", "cpu")          # a GPU checkpoint samples on CPU
    assert all(p.device.type == "cpu" for p in exp.model.parameters())
