"""molsample.config: the experiment sections, the keys that moved between versions, overrides, and every config
file in configs/ and experiments/ loading and building."""
import pytest

from molsample.config import TRAIN_KEYS_MOVED, ConfigError, ExperimentConfig
from molsample.targets import load_target

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-gmm.yaml"


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(TINY.read_text().replace("batch: 64", "batch: 64\n  bacth: 3"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bacth'\]"):
        ExperimentConfig.load(bad)


def test_keys_moved_from_data_to_train(tmp_path):
    # a checkpoint written when the one-step KL keys were data: keys still loads; a YAML config is told
    study = ROOT / "experiments" / "aldp-cartesian" / "aldp-data-kl.yaml"
    saved = ExperimentConfig.load(study).to_dict()
    train = {k: v for k, v in saved["train"].items() if k not in ("kl", "init_checkpoint")}
    old = {**saved, "data": {**saved["data"], "kl_weight": 0.5, "kl_batch": 16, "init_checkpoint": ""}, "train": train}
    cfg = ExperimentConfig.from_saved(old, "old checkpoint")
    assert cfg.train.kl.weight == 0.5 and cfg.train.kl.batch == 16 and cfg.train.init_checkpoint == ""
    assert cfg.data.path == saved["data"]["path"] and cfg.train.kl.start == saved["train"]["kl"]["start"]
    bad = tmp_path / "c.yaml"
    bad.write_text(f"extends: {study}\ndata: {{kl_start: 5}}\n")
    with pytest.raises(ConfigError, match=r"\['kl_start'\] belong under train: \(as train.kl.start"):
        ExperimentConfig.load(bad)


def test_flat_train_keys_of_earlier_versions(tmp_path):
    """A checkpoint's flat train: mapping (sd_*, bij_*, kl_*, lr_*, a number under lr) is read into today's
    sections, with the same values; the same keys in a YAML file are an error naming where each went."""
    saved = ExperimentConfig.load(ROOT / "configs" / "mw54-h256-cos-bij1k-tail.yaml").to_dict()
    train = saved["train"]
    flat = {k: v for k, v in train.items() if k not in ("lr", "distill", "hinge", "kl")}
    flat.update({old: train[sec][new] for old, (sec, new) in TRAIN_KEYS_MOVED.items()}, lr=train["lr"]["value"])
    flat.update(kl_weight=0.25, energy_cap=50.0)
    cfg = ExperimentConfig.from_saved({**saved, "train": flat}, "old checkpoint")
    assert (cfg.train.lr.value, cfg.train.distill.ramp, cfg.train.hinge.prior_scale) == (2.5e-5, 1, 1.5)
    assert cfg.train.kl.weight == 0.25 and cfg.train.kl.energy_cap == 50.0
    expected = {**train, "kl": {**train["kl"], "weight": 0.25, "energy_cap": 50.0}}
    assert cfg.to_dict()["train"] == expected
    bad = tmp_path / "flat.yaml"
    bad.write_text(f"extends: {TINY}\ntrain: {{sd_weight: 1.0, bij_bound: 0.1}}\n")
    with pytest.raises(ConfigError, match=r"sd_weight -> train.distill.weight, bij_bound -> train.hinge.bound"):
        ExperimentConfig.load(bad)
    bad.write_text(f"extends: {TINY}\ntrain: {{lr: 1.0e-4}}\n")
    with pytest.raises(ConfigError, match=r"train.lr is a section now .* lr: \{value: 0.0001\}"):
        ExperimentConfig.load(bad)


def test_config_overrides_are_checked_like_the_file(tmp_path):
    cfg = ExperimentConfig.load(TINY, ["train.kl.weight=0.1", "model.hidden=8", "data.path=frames.npz", "seed=3"])
    assert cfg.train.kl.weight == 0.1 and cfg.model.hidden == 8 and cfg.data.path == "frames.npz" and cfg.seed == 3
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['wieght'\]"):
        ExperimentConfig.load(TINY, ["train.kl.wieght=0.1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        ExperimentConfig.load(TINY, ["train.kl.weight"])
    with pytest.raises(ConfigError, match="'target' is not a section"):
        ExperimentConfig.load(TINY, ["target.x=1"])
    with pytest.raises(ConfigError, match="key 'value'"):
        ExperimentConfig.load(TINY, ["train.lr.value=fast"])
    # YAML 1.1 reads exponents without a dot or sign as strings; a float key takes them as numbers
    for text, value in [("1e-4", 1e-4), ("1.0e6", 1e6), ("2E+3", 2e3)]:
        assert ExperimentConfig.load(TINY, [f"train.lr.value={text}"]).train.lr.value == value
    with pytest.raises(ConfigError, match=r"train.lr.value = -5.0: must be positive"):     # the range is checked too
        ExperimentConfig.load(TINY, ["train.lr.value=-.5e1"])
    with pytest.raises(ConfigError, match="key 'value'"):
        ExperimentConfig.load(TINY, ["train.lr.value=1e"])
    with pytest.raises(ConfigError, match="key 'batch'"):
        ExperimentConfig.load(TINY, ["train.batch=1e3"])                # an int key stays strict
    # a number where a section is: the override names the section's keys; a section given a number by default
    with pytest.raises(ConfigError, match=r"train.distill is a section .* e.g. train.distill.batch="):
        ExperimentConfig.load(TINY, ["train.distill=0.5"])            # the file has a distill: section
    with pytest.raises(ConfigError, match=r"key 'hinge': expected a section \(a mapping of \['weight'"):
        ExperimentConfig.load(TINY, ["train.hinge=1.0"])              # it has none: the default's is replaced


def test_every_config_file_loads_and_builds():
    from molsample.build import build
    from molsample.config import ExperimentConfig
    paths = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "experiments").rglob("*.yaml"))
    assert paths, "configs/ holds at least the CI-sized config"
    from molsample.coords.model import ICExperimentConfig, is_internal_config
    from molsample.data import resolve_path
    for path in paths:
        if is_internal_config(path):              # the internal-coordinate route: config and its data files
            cfg = ICExperimentConfig.load(path)
            assert load_target(cfg.target).topology is not None
            for f in cfg.data.paths:
                assert resolve_path(f).is_file()
            continue
        cfg = ExperimentConfig.load(path)
        exp = build(cfg)
        assert exp.target.name == cfg.target and exp.space.dim == exp.target.dim
