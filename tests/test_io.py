"""One samples file format (molsample.io.save_samples): every file records its kind and schema version,
files written before that still load by the one rule that tells them apart, and an ensemble built in memory
equals the one read back from its file."""

import numpy as np
import pytest

from molsample.analysis.ensembles import Ensemble, load_ensemble
from molsample.data import load_frames
from molsample.io import SAMPLES_SCHEMA, InputError, open_npz, read_meta, samples_kind, save_samples
from molsample.targets import load_target

from conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def aldp():
    return load_target("aldp")


@pytest.mark.parametrize("name,kind", [("legacy_samples.npz", "samples"), ("legacy_mcmc.npz", "mcmc"),
                                       ("legacy_umbrella.npz", "umbrella")])
def test_files_written_before_kinds_were_recorded_still_load(aldp, name, kind):
    path = FIXTURES / name
    d = open_npz(path)
    assert "schema" not in d and samples_kind(d) == kind
    ens = load_ensemble([path], aldp)
    assert len(ens.x) == 20 and ens.phi is not None and np.isfinite(ens.energy).all()
    assert (ens.log_w is not None) == (kind != "mcmc")
    x, lw = load_frames(path, aldp)
    assert x.shape == (20, 22, 3) and len(lw) == 20


def test_the_shipped_compact_references_are_of_kind_reference():
    d = open_npz(ROOT / "systems" / "aldp" / "reference" / "aldp_umbrella_2d_30x18.npz")
    assert samples_kind(d) == "reference"


def test_a_samples_file_records_its_kind_and_schema_and_equals_the_in_memory_ensemble(tmp_path, aldp):
    x = np.load(FIXTURES / "aldp_conformations.npz")["xyz"][:30].astype(np.float64)
    lw = np.random.default_rng(1).normal(size=30)
    f = save_samples(tmp_path / "s.npz", "samples", {"system": "aldp", "steps": 1}, x=x, log_q=np.zeros(30), log_w=lw)
    d = open_npz(f)
    assert str(d["kind"]) == "samples" and int(d["schema"]) == SAMPLES_SCHEMA and samples_kind(d) == "samples"
    assert read_meta(d, f) == {"system": "aldp", "steps": 1}
    disk, mem = load_ensemble([f], aldp), Ensemble.from_samples(x, lw, aldp)
    for a in ("x", "energy", "log_w", "phi", "psi"):
        assert np.array_equal(getattr(disk, a), getattr(mem, a)), a
    assert not list(tmp_path.glob("*.tmp"))                         # written to a temporary name, renamed
    with pytest.raises(ValueError, match="needs x, log_q and log_w"):
        save_samples(tmp_path / "bad.npz", "samples", {}, x=x)
    with pytest.raises(ValueError, match="unknown samples kind"):
        save_samples(tmp_path / "bad.npz", "weights", {}, x=x)
    assert not (tmp_path / "bad.npz").exists()


def test_a_file_of_no_known_kind_is_refused_with_its_arrays_named(tmp_path):
    np.savez(tmp_path / "odd.npz", foo=np.zeros(3))
    with pytest.raises(InputError, match="foo"):
        samples_kind(open_npz(tmp_path / "odd.npz"))
    np.savez(tmp_path / "meta.npz", x=np.zeros((1, 22, 3)), meta="not json")
    with pytest.raises(InputError, match="not JSON"):
        read_meta(open_npz(tmp_path / "meta.npz"), tmp_path / "meta.npz")
