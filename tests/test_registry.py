"""Every system and config file loads; bad files give errors that name the problem."""
from pathlib import Path

import pytest

from molsample.config import ConfigError, load_yaml
from molsample.targets import load_target, system_files
from molsample.targets.registry import systems_dir

from conftest import ROOT

EXPECTED = {"aldp", "aldp-vacuum", "lj13", "lj55", "dw4", "gmm40", "funnel10", "manywell32"}


def test_every_system_file_builds():
    files = system_files()
    assert EXPECTED <= set(files)
    for name, path in files.items():
        target = load_target(path)
        assert target.name == name
        assert (path.parent / "README.md").is_file(), f"{path.parent} needs a README"


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


def test_dimensions_of_the_standard_systems():
    dims = {n: (load_target(n).dim, load_target(n).dof) for n in EXPECTED}
    assert dims["aldp"] == (66, 63) and dims["lj13"] == (39, 36) and dims["lj55"] == (165, 162)
    assert dims["dw4"] == (8, 6) and dims["manywell32"] == (32, 32)


def test_unknown_system_and_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown system 'lj99'"):
        load_target("lj99")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: lennard-jones\nn_particles: 13\nepsilonn: 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epsilonn'\]"):
        load_target(bad)
    bad.write_text("name: x\nkind: lennard-jones\n")
    with pytest.raises(ConfigError, match="missing required key.*n_particles"):
        load_target(bad)
    bad.write_text("name: x\nkind: lennard-jones\nn_particles: thirteen\n")
    with pytest.raises(ConfigError, match="expected int"):
        load_target(bad)
    bad.write_text("name: x\nkind: quantum\n")
    with pytest.raises(ConfigError, match="unknown system kind 'quantum'"):
        load_target(bad)


def test_systems_dir_can_be_overridden(tmp_path, monkeypatch):
    (tmp_path / "w.yaml").write_text("name: w\nkind: manywell\ndim: 4\n")
    monkeypatch.setenv("MOLSAMPLE_SYSTEMS", str(tmp_path))
    assert systems_dir() == Path(tmp_path) and set(system_files()) == {"w"}
    assert load_target("w").dim == 4


def test_a_study_config_extends_another_section_by_section(tmp_path):
    """extends: lays a file over the one it names: mappings merge key by key, other values replace, a cycle
    or a missing base is an error naming the files; every file in experiments/ extends a configuration."""
    (tmp_path / "base.yaml").write_text("target: gmm40\nmodel: {hidden: 32, layers: 2}\ntrain: {lr: {value: 1.0e-3, schedule: cosine}, batch: 64}\n")
    (tmp_path / "study.yaml").write_text("extends: base.yaml\nmodel: {hidden: 64}\ntrain: {lr: {value: 5.0e-4}}\nseed: 3\n")
    assert load_yaml(tmp_path / "study.yaml") == {"target": "gmm40", "model": {"hidden": 64, "layers": 2},
                                                   "train": {"lr": {"value": 5.0e-4, "schedule": "cosine"}, "batch": 64},
                                                   "seed": 3}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_yaml(tmp_path / "c.yaml")
    studies = sorted((ROOT / "experiments").rglob("*.yaml"))
    assert len(studies) >= 20
    assert all("extends:" in f.read_text() for f in studies if f.stem != "manywell32")
