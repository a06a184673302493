"""Reference MD: short runs write readable trajectories with energies; resume neither loses nor duplicates."""
import json

import mdtraj
import numpy as np
import pytest
import torch

from molsample.cli import main
from molsample.md import MDSettings, run_md
from molsample.targets import load_target


def short(system="aldp", **kw):
    base = dict(system=system, ns=0.004, report_every=20, equilibration_ps=0.02, chunk_frames=50)
    base.update(kw)
    return MDSettings(**base)


def test_short_md_writes_hdf5_with_energies_matching_the_target(tmp_path):
    run_md(short(), tmp_path / "md.h5", show_progress=False)
    traj = mdtraj.load(str(tmp_path / "md.h5"))
    assert traj.n_frames == 200 and traj.n_atoms == 22
    e = np.load(tmp_path / "md.energies.npz")
    assert str(e["kind"]) == "md-energies" and int(e["schema"]) >= 1
    target = load_target("aldp")
    u = target.energy(torch.as_tensor(traj.xyz, dtype=torch.float64)).numpy()
    assert np.allclose(u * target.kt, e["energy_kj_per_mol"], atol=2e-3)      # positions stored in float32
    assert np.allclose(e["reduced_energy"], e["energy_kj_per_mol"] / target.kt)
    saved = json.loads((tmp_path / "md.json").read_text())
    assert saved["settings"]["system"] == "aldp" and saved["openmm_version"]
    rec = saved["replicas"][0]
    assert rec["energy_minimised_kj"] < rec["energy_start_kj"]


def test_resume_after_a_kill_neither_loses_nor_duplicates_frames(tmp_path):
    run_md(short(ns=0.002), tmp_path / "a.h5", show_progress=False)
    # simulate a kill: keep only the first chunk of a second, identical run, then resume it
    run_md(short(ns=0.002), tmp_path / "b.h5", show_progress=False)
    parts = sorted((tmp_path / "b.h5.parts" / "r0").glob("chunk_*.npz"))
    assert len(parts) == 2
    parts[-1].unlink()
    (tmp_path / "b.h5").unlink()
    with pytest.raises(FileExistsError, match="--resume"):
        run_md(short(ns=0.002), tmp_path / "b.h5", show_progress=False)
    run_md(short(ns=0.002), tmp_path / "b.h5", resume=True, show_progress=False)
    a, b = mdtraj.load(str(tmp_path / "a.h5")), mdtraj.load(str(tmp_path / "b.h5"))
    assert a.n_frames == b.n_frames == 100
    assert np.array_equal(a.xyz, b.xyz)          # same seed, exact continuation from the checkpoint


def test_lj13_md_and_cli_replicas(tmp_path, capsys):
    code = main(["md", "lj13", "--ns", "0.002", "--report-every", "20", "--equilibration", "0.02",
                 "--replicas", "2", "--out", str(tmp_path / "lj.h5"), "--quiet"])
    assert code == 0
    target = load_target("lj13")
    first = []
    for r in (0, 1):
        traj = mdtraj.load(str(tmp_path / f"lj.r{r}.h5"))
        e = np.load(tmp_path / f"lj.r{r}.energies.npz")["reduced_energy"]
        u = target.energy(torch.as_tensor(traj.xyz, dtype=torch.float64)).numpy()
        assert traj.n_frames == 100 and np.allclose(u, e, atol=1e-3)
        first.append(traj.xyz[-1])
    assert not np.allclose(first[0], first[1])      # the replicas are independent
    code = main(["md", "lj13", "--ns", "0.001", "--temperature", "50", "--out", str(tmp_path / "x.h5"), "--quiet"])
    assert code == 2 and "tau" in capsys.readouterr().err
