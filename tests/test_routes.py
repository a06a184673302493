"""molsample.routes: the data-assisted route end to end (train -> sample -> compare on alanine dipeptide), the
shipped Cartesian checkpoint, the alignment option, CUDA."""
import json

import numpy as np
import pytest
import torch


from molsample.cli import main

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-aldp-data.yaml"
UMBRELLA = ROOT / "systems" / "aldp" / "reference" / "aldp_umbrella_2d_30x18.npz"


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
def test_data_route_trains_on_cuda(tmp_path):
    from molsample.build import build
    from molsample.config import ExperimentConfig
    from molsample.train import load_checkpoint, make_trainer
    cfg = ExperimentConfig.load(TINY, ["data.align=rotation", "train.iterations=3"])
    state = make_trainer(build(cfg, "cuda"), tmp_path / "c", progress=False).run()
    assert state.iteration == 3 and state.nonfinite_total == 0
    exp, _ = load_checkpoint(tmp_path / "c" / "checkpoint.pt", "cpu")          # a GPU checkpoint samples on CPU
    assert all(p.device.type == "cpu" for p in exp.model.parameters())
