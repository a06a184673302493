"""The command line: `molsample systems` and `molsample energy`."""
import json

import mdtraj
import numpy as np
import torch

from molsample.cli import main
from molsample.targets import load_target

from conftest import ROOT


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_systems_lists_every_system(capsys):
    code, out, _ = run(capsys, "systems", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["aldp"]["n_particles"] == 22 and rows["aldp"]["temperature"] == 300.0
    assert rows["aldp"]["forcefield"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    assert rows["lj55"]["dof"] == 162
    code, out, _ = run(capsys, "systems")
    assert code == 0 and "aldp-vacuum" in out and "amber99_obc.xml" in out


def test_energy_of_a_pdb_torch_and_openmm_agree(capsys):
    pdb = str(ROOT / "systems/aldp/aldp.pdb")
    _, out_t, _ = run(capsys, "energy", "aldp", pdb, "--json")
    _, out_o, _ = run(capsys, "energy", "aldp", pdb, "--json", "--backend", "openmm")
    t, o = json.loads(out_t), json.loads(out_o)
    assert t["n_frames"] == 1 and t["unit"] == "kT"
    assert abs(t["reduced_energy"][0] - o["reduced_energy"][0]) < 1e-6
    assert abs(t["energy_kj_per_mol"][0] - t["reduced_energy"][0] * 2.494338785) < 1e-3


def test_energy_of_dcd_and_hdf5_frames(capsys, tmp_path, aldp_conformations):
    target = load_target("aldp")
    traj = mdtraj.Trajectory(aldp_conformations[:7], target.topology)
    traj.save_dcd(str(tmp_path / "t.dcd"))
    traj.save_hdf5(str(tmp_path / "t.h5"))
    for name in ("t.dcd", "t.h5"):
        code, out, _ = run(capsys, "energy", "aldp", str(tmp_path / name), "--json")
        kw = {} if name.endswith(".h5") else {"top": target.topology}        # HDF5 carries its own topology
        saved = mdtraj.load(str(tmp_path / name), **kw).xyz                  # as stored (float32)
        assert np.abs(saved - traj.xyz).max() < 1e-5
        expected = target.energy(torch.as_tensor(saved, dtype=torch.float64)).numpy()
        assert code == 0
        assert np.allclose(json.loads(out)["reduced_energy"], expected, rtol=1e-9)


def test_energy_of_npz_for_lj(capsys, tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 13, 3)) * 1.5
    np.savez(tmp_path / "x.npz", xyz=x)
    code, out, _ = run(capsys, "energy", "lj13", str(tmp_path / "x.npz"), "--json")
    assert code == 0
    assert np.allclose(json.loads(out)["reduced_energy"], load_target("lj13").energy(torch.tensor(x)).numpy())
    code, out, _ = run(capsys, "energy", "lj13", str(tmp_path / "x.npz"), "--json", "--backend", "openmm")
    assert code == 0


def test_mismatched_atoms_and_bad_input_give_clear_errors(capsys, tmp_path):
    np.savez(tmp_path / "x.npz", xyz=np.zeros((2, 21, 3)))
    code, _, err = run(capsys, "energy", "aldp", str(tmp_path / "x.npz"))
    assert code == 2 and "(B, 22, 3)" in err
    top = mdtraj.Topology()
    chain = top.add_chain()
    res = top.add_residue("ARG", chain)
    for i in range(22):
        top.add_atom(f"C{i}", mdtraj.element.carbon, res)
    mdtraj.Trajectory(np.random.default_rng(0).normal(size=(1, 22, 3)), top).save_pdb(str(tmp_path / "wrong.pdb"))
    code, _, err = run(capsys, "energy", "aldp", str(tmp_path / "wrong.pdb"))
    assert code == 2 and "atom 0 is ARG:C0" in err and "ACE:CH3" in err
    np.savez(tmp_path / "nan.npz", xyz=np.full((1, 22, 3), np.nan))
    code, _, err = run(capsys, "energy", "aldp", str(tmp_path / "nan.npz"))
    assert code == 2 and "NaN" in err
    code, _, err = run(capsys, "energy", "nosuch", str(tmp_path / "x.npz"))
    assert code == 2 and "unknown system 'nosuch'" in err
    code, _, err = run(capsys, "energy", "aldp", str(tmp_path / "missing.dcd"))
    assert code == 2 and "no such file" in err


def test_console_script_is_installed():
    import shutil
    import subprocess
    exe = shutil.which("molsample")
    assert exe is not None
    res = subprocess.run([exe, "systems"], capture_output=True, text=True, check=True)
    assert "lj13" in res.stdout
