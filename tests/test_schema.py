"""molsample.schema: extends: between YAML files, section by section; cycles and missing files."""
import pytest

from molsample.schema import ConfigError, load_yaml

from conftest import ROOT


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
