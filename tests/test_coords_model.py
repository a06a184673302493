"""The internal-coordinate route end to end: `molsample train` (route: internal), checkpoints that load
with weights_only and resume, `molsample sample` writing Cartesian conformations whose weights an
independent path (forward transform + the base's density + the force field) reproduces."""
import json

import numpy as np
import pytest
import torch

from molsample.cli import main
from molsample.coords.model import load_internal_checkpoint
from molsample.targets import load_target

from conftest import ROOT

MD = ROOT / "systems/aldp/reference/aldp_md_2x50ns.npz"


def _config(tmp_path, **train):
    t = {"iterations": 4, "batch": 16, "eval_every": 2, "eval_samples": 100, "checkpoint_every": 2, **train}
    path = tmp_path / "ic.yaml"
    path.write_text(json.dumps({"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]},
                                "map": {"hidden": 16}, "train": t}))
    return path


def test_train_resume_sample_and_independent_weights(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 2          # never overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--resume", "--iterations", "6"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["iteration"] == 6 and ckpt["config"]["train"]["iterations"] == 6
    assert len((out / "log.jsonl").read_text().splitlines()) == 6
    samples, traj = tmp_path / "s.npz", tmp_path / "s.pdb"
    assert main(["sample", str(out / "checkpoint.pt"), "--n", "300", "--out", str(samples), "--traj", str(traj),
                 "--seed", "3"]) == 0
    d = np.load(samples)
    meta = json.loads(str(d["meta"]))
    assert d["x"].shape == (300, 22, 3) and meta["route"] == "internal" and meta["n_nonpositive_det"] == 0
    # the same seed gives the same draws from the reloaded model
    sampler, _ = load_internal_checkpoint(out / "checkpoint.pt")
    again = sampler.draw(300, torch.Generator().manual_seed(3))
    assert np.allclose(again["x"].numpy(), d["x"]) and np.allclose(again["log_w"].numpy(), d["log_w"])
    # the target side of each weight by another path: y recomputed from x (forward transform), the
    # Jacobian of the inverse, the Cartesian force field: log w = -u(x) + log|det dx/dy| - log q
    target = load_target("aldp")
    x = torch.as_tensor(d["x"])
    y = sampler.base.ic.forward(x)
    _, log_det = sampler.base.ic.inverse(y)
    u = target.energy(x)
    ok = np.isfinite(d["log_w"])
    expect = (-u + log_det - torch.as_tensor(d["log_q"])).numpy()
    assert ok.mean() > 0.99 and np.allclose(expect[ok], d["log_w"][ok], atol=1e-6)
    # L-alanine stays L: every sample has the stereocentre of the frames
    from molsample.analysis.ensembles import chirality_signs
    assert np.all(chirality_signs(d["x"], target.topology) > 0)
    import mdtraj
    assert mdtraj.load(str(traj)).n_frames == 300
    # a single-step model has no K = 2: a one-line error, nothing written
    capsys.readouterr()
    assert main(["sample", str(out / "checkpoint.pt"), "--n", "10", "--steps", "2", "--out",
                 str(tmp_path / "k2.npz")]) == 2
    err = capsys.readouterr().err
    assert "single step" in err and "Traceback" not in err and not (tmp_path / "k2.npz").exists()


def test_a_step_conditioned_model_trains_and_samples_k_steps(tmp_path):
    cfg = tmp_path / "k.yaml"
    cfg.write_text(json.dumps({"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]},
                               "map": {"hidden": 16, "step_conditioned": True},
                               "train": {"iterations": 4, "batch": 16, "eval_every": 4, "eval_samples": 50,
                                         "checkpoint_every": 2, "steps": [1, 2, 4], "self_consistency": 1.0}}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["steps"] in (1, 2, 4) and np.isfinite(r["sc_loss"]) for r in rows)
    assert {"eval_ess", "eval_ess_K2", "eval_ess_K4"} <= set(rows[-1])
    assert main(["sample", str(out / "checkpoint.pt"), "--n", "64", "--steps", "4", "--seed", "1",
                 "--out", str(tmp_path / "k4.npz")]) == 0
    d = np.load(tmp_path / "k4.npz")
    meta = json.loads(str(d["meta"]))
    assert meta["steps"] == 4 and meta["n_nonpositive_det"] == 0 and np.isfinite(d["log_w"]).mean() > 0.9


def test_base_alone_log_q_is_the_base_density_of_the_conformation(tmp_path):
    cfg = _config(tmp_path, iterations=0)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    sampler, _ = load_internal_checkpoint(tmp_path / "r" / "checkpoint.pt")
    d = sampler.draw(200, torch.Generator().manual_seed(0))
    # gate 0: the map is the identity, so log q is the base's density of y recomputed from x
    y = sampler.base.ic.forward(d["x"])
    lp = sampler.base.log_prob(y)
    ok = torch.isfinite(d["log_q"])
    assert ok.all() and torch.allclose(lp[ok], d["log_q"][ok], atol=1e-6)


@pytest.mark.parametrize("edit, expect", [
    ({"map": {"lipschitz": 1.5}}, "map.lipschitz"),
    ({"train": {"batch": 0}}, "train.batch"),
    ({"data": {"paths": []}}, "data.paths"),
    ({"extra": 1}, "unknown key"),
    ({"target": "lj13"}, "no bond graph"),
    ({"train": {"steps": [1, 2]}}, "step-conditioned"),
    ({"train": {"self_consistency": 1.0}}, "needs a step count"),
    ({"base": {"refine_min_ess": 2.0}}, "base.refine_min_ess"),
])
def test_bad_internal_configs_exit_2_with_one_line(tmp_path, capsys, edit, expect):
    base = {"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]}, "train": {"iterations": 1}}
    for k, v in edit.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(base))
    assert main(["train", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_log_q_of_an_opened_map_is_the_change_of_variables_of_the_whole_chain(tmp_path):
    cfg = _config(tmp_path, iterations=0)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    sampler, _ = load_internal_checkpoint(tmp_path / "r" / "checkpoint.pt")
    with torch.no_grad():                                   # open the gate: a map far from the identity
        sampler.flow.gate.fill_(2.0)
        for w in sampler.flow.weights:
            w.mul_(3.0)
    z0, log_p = sampler.base.sample_latent(4, torch.Generator().manual_seed(5))
    d = sampler.one_step.draw(4, torch.Generator().manual_seed(5))
    assert torch.allclose(d["z0"], z0)
    wts = sampler.flow.normalised()
    chain = lambda z: sampler.base.from_latent(sampler.flow.step(z[None], wts))[0][0]
    for i in range(4):
        jac = torch.autograd.functional.jacobian(chain, z0[i])           # d y / d z0, 60 x 60
        _, logabs = torch.linalg.slogdet(jac)              # (the sign is the coordinate ordering's)
        assert abs(float((log_p[i] - logabs).detach()) - float(d["log_q"][i].detach())) < 1e-8
    assert float(torch.tanh(sampler.flow.gate.detach())) > 0.9


def test_the_shipped_internal_model_loads_and_draws_valid_weights():
    from molsample.quickstart import DEFAULT_CHECKPOINT
    path = ROOT / "systems/aldp/models/aldp-ic.pt"
    assert DEFAULT_CHECKPOINT == path and path.stat().st_size < 5e6
    sampler, ckpt = load_internal_checkpoint(path)
    assert ckpt["config"]["route"] == "internal" and ckpt["state"]["iteration"] > 0
    d = sampler.draw(400, torch.Generator().manual_seed(0))
    assert (d["sign"] > 0).all() and d["out_of_domain"] == 0
    lw = d["log_w"].numpy()
    assert np.isfinite(lw).all()
    w = np.exp(lw - lw.max())
    assert w.sum() ** 2 / (w ** 2).sum() / len(w) > 0.1       # 0.30 on 100,000 draws; a broken model gives ~0


def test_quickstart_with_an_internal_checkpoint_weights_every_sample(tmp_path):
    cfg = _config(tmp_path, iterations=2)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = tmp_path / "qs"
    assert main(["quickstart", "--checkpoint", str(tmp_path / "r" / "checkpoint.pt"), "--out", str(out),
                 "--n", "300", "--quiet"]) == 0
    meta = json.loads((out / "quickstart.json").read_text())
    assert meta["route"] == "internal" and meta["n"] == 300 and meta["n_nonpositive_det"] == 0
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (300, 22, 3) and np.isfinite(z["log_w"]).all()
    report = (out / "report.md").read_text()
    assert "every one with its exact importance weight" in report and "vs_reference/" in report
    ref = json.loads((out / "vs_reference" / "metrics.json").read_text())["reference"]
    assert ref["kind"] == "umbrella"


def test_refining_the_base_on_its_own_weighted_draws_raises_its_ess():
    """The base fitted to the umbrella frames as drawn (flattened over phi) proposes alpha_L far too
    often; refitting it to its own draws weighted by exp(-u)/q moves it towards the force field's
    distribution, which fresh draws (another seed) measure as a higher Kish ESS."""
    from molsample.coords.model import ICBaseConfig, InternalCoordinateTarget, refine_base
    from molsample.coords.base import StructuredBase
    from molsample.coords.transform import InternalCoordinates
    from molsample.data import load_frames
    from molsample.estimate import ess
    target = load_target("aldp")
    ic = InternalCoordinates(target.topology)
    x, _ = load_frames(ROOT / "systems/aldp/reference/aldp_umbrella_2d_30x18.npz", target)
    bc = ICBaseConfig(refine_rounds=1, refine_samples=50000)
    base = StructuredBase.fit(ic, x, None, target.topology, **bc.fit_kwargs())
    ict = InternalCoordinateTarget(target, ic=ic)
    refined, log = refine_base(base, ict, bc, torch.Generator().manual_seed(0))

    def fresh_ess(b):
        y, log_q = b.sample(10000, torch.Generator().manual_seed(1))
        return ess(ict.log_weights(y, log_q).numpy(), n_boot=0).value

    before, after = fresh_ess(base), fresh_ess(refined)
    assert len(log) == 2 and log[0]["draws"] == 50000 and abs(log[0]["ess_before"] - before) < 0.1
    assert after > before + 0.05, (before, after)
    # the refit's own draws measure it too, and the better of the two bases is the one returned
    assert log[1]["ess_before"] > log[0]["ess_before"] and log[1]["kept_round"] == 1 and log[1]["beta"] is None
    assert abs(log[1]["ess_before"] - after) < 0.1


def test_the_tempering_exponent_keeps_the_asked_ess():
    """beta is the largest exponent whose weights w^beta have Kish ESS >= min_ess (1 when w itself has)."""
    from molsample.coords.model import _tempering_exponent
    from molsample.estimate import ess
    lw = np.random.default_rng(0).normal(0, 4.0, 5000)            # ESS of w itself ~ exp(-16)
    beta = _tempering_exponent(lw, 100, 0.2)
    zero = np.full(100, -np.inf)
    assert 0 < beta < 1
    assert ess(np.concatenate([beta * lw, zero]), n_boot=0).value == pytest.approx(0.2, abs=2e-3)
    assert ess(np.concatenate([1.05 * beta * lw, zero]), n_boot=0).value < 0.2


def test_flow_matching_to_the_data_frames_trains_and_resumes(tmp_path):
    """train.flow_matching fits the step-conditioned velocity to the frames (here alone: energy_weight 0); its
    loss falls, the run resumes, and the config refuses a map that is not step-conditioned."""
    def write(name, **kw):
        cfg = tmp_path / name
        cfg.write_text(json.dumps({"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]},
                                   "map": {"hidden": 32, "step_conditioned": kw.pop("conditioned", True)},
                                   "train": {"iterations": 60, "batch": 64, "lr": 1e-2, "eval_every": 30,
                                             "eval_samples": 50, "checkpoint_every": 30, "steps": [4],
                                             "flow_matching": 1.0, "energy_weight": 0.0, **kw}}))
        return cfg
    out = tmp_path / "fm"
    assert main(["train", str(write("fm.yaml", iterations=30)), "--out", str(out), "--quiet"]) == 0
    assert main(["train", str(write("fm.yaml")), "--out", str(out), "--quiet", "--resume", "--iterations", "60"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 61)) and all(np.isfinite(r["fm_loss"]) for r in rows)
    first, last = np.mean([r["fm_loss"] for r in rows[:10]]), np.mean([r["fm_loss"] for r in rows[-10:]])
    assert last < first
    assert main(["train", str(write("bad.yaml", conditioned=False)), "--out", str(tmp_path / "b"), "--quiet"]) == 2


def test_maximum_likelihood_on_the_frames_trains_without_the_energy(tmp_path):
    cfg = tmp_path / "ml.yaml"
    cfg.write_text(json.dumps({"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]},
                               "map": {"hidden": 16},
                               "train": {"iterations": 3, "batch": 16, "eval_every": 3, "eval_samples": 50,
                                         "checkpoint_every": 3, "energy_weight": 0.0, "max_likelihood": 1.0}}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["ml_nll"]) and r["ml_inverse_residual"] < 1e-9 for r in rows)
    assert rows[-1]["gate"] != 0 and rows[-1]["eval_det_nonpositive"] == 0
