"""molsample.targets.registry: every system file loads; bad files give errors that name the problem."""
from pathlib import Path

import pytest

from molsample.schema import ConfigError
from molsample.targets import load_target, system_files
from molsample.targets.registry import systems_dir

EXPECTED = {"aldp", "aldp-vacuum", "lj13", "lj55", "dw4", "gmm40", "funnel10", "manywell32"}


def test_every_system_file_builds():
    files = system_files()
    assert EXPECTED <= set(files)
    for name, path in files.items():
        target = load_target(path)
        assert target.name == name
        assert (path.parent / "README.md").is_file(), f"{path.parent} needs a README"


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
