"""Bad input, as a new user gives it: every case ends with exit code 2 and one line on stderr that
names the flag, key or file and the bad value, no traceback, nothing half-written, no file
clobbered, and the check happens before long work. Checkpoints never run code."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import pytest
import torch

from molsample.cli import main
from molsample.io import InputError, read_checkpoint, read_positions
from molsample.md import MDSettings, run_md
from molsample.runtime import RunLock
from molsample.targets import load_target

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-gmm.yaml"
PDB = ROOT / "systems" / "aldp" / "aldp.pdb"
MD_FAST = ["--report-every", "20", "--equilibration", "0.02", "--chunk-frames", "50", "--quiet"]


def fails(capsys, argv, *words):
    """Run the CLI; it must exit 2 with one stderr line containing every word. Returns that line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:          # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert str(word) in err, (word, err)
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint of the tiny GMM config (4 iterations)."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", str(TINY), "--out", str(out), "--iterations", "4", "--quiet"]) == 0
    return out / "checkpoint.pt"


class Payload:
    """Unpickling this calls os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path, checkpoint):
    """A checkpoint-shaped file whose unpickling would create tmp_path/PWNED."""
    marker = tmp_path / "PWNED"
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"] = Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    return path, marker


# --------------------------------------------------------------------------- checkpoints never run code

def test_reading_a_checkpoint_with_code_in_it_refuses_it_without_running_it(evil):
    path, marker = evil
    with pytest.raises(InputError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("command", ["sample", "export-model", "resume", "init", "quickstart"])
def test_every_command_that_reads_a_checkpoint_refuses_one_with_code(capsys, tmp_path, evil, command):
    path, marker = evil
    if command == "sample":
        argv = ["sample", path, "--n", "8", "--out", tmp_path / "s.npz"]
    elif command == "export-model":
        argv = ["export-model", path, "--out", tmp_path / "e.pt"]
    elif command == "resume":
        run = tmp_path / "run"
        run.mkdir()
        (run / "checkpoint.pt").write_bytes(path.read_bytes())
        argv = ["train", TINY, "--out", run, "--resume", "--quiet"]
    elif command == "init":
        argv = ["train", TINY, "--out", tmp_path / "run2", "--quiet", "--set", f"train.init_checkpoint={path}"]
    else:
        argv = ["quickstart", "--checkpoint", path, "--out", tmp_path / "qs", "--quiet"]
    shown = tmp_path / "run" / "checkpoint.pt" if command == "resume" else path
    err = fails(capsys, argv, str(shown), "refused", "posix.system")
    assert "weights_only" not in err                 # no advice to load it unsafely
    assert not marker.exists()
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "e.pt").exists()


def test_shipped_model_loads_with_weights_only():
    ckpt = read_checkpoint(ROOT / "systems" / "aldp" / "models" / "aldp-onestep.pt")
    assert {"config", "ema", "state"} <= set(ckpt)


@pytest.mark.parametrize("kind", ["truncated", "text", "npz", "directory", "missing", "tensor"])
def test_a_file_that_is_not_a_checkpoint(capsys, tmp_path, checkpoint, kind):
    path = tmp_path / "c.pt"
    if kind == "truncated":
        data = checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        words = ("not a readable molsample checkpoint",)
    elif kind == "text":
        path.write_text("hello\n")
        words = ("not a readable molsample checkpoint",)
    elif kind == "npz":
        np.savez(open(path, "wb"), x=np.zeros(3))
        words = ("not a readable molsample checkpoint",)
    elif kind == "directory":
        path.mkdir()
        words = ("is a directory",)
    elif kind == "missing":
        words = ("no such checkpoint file",)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
        words = ("not a molsample checkpoint", "config")
    out = tmp_path / "s.npz"
    fails(capsys, ["sample", path, "--n", "4", "--out", out], path, *words)
    assert not out.exists()


# --------------------------------------------------------------------------- wrong settings are refused

@pytest.mark.parametrize("value", ["0", "-10", "nan"])
def test_md_temperature_must_be_positive(capsys, tmp_path, value):
    fails(capsys, ["md", "aldp", "--ns", "0.001", "--temperature", value, "--out", tmp_path / "m.h5", *MD_FAST],
          "--temperature", value)
    assert not list(tmp_path.iterdir())


def test_md_settings_are_checked_by_the_library_too(tmp_path):
    for kw, flag in ((dict(ns=-1), "--ns"), (dict(ns=0.001, temperature=0.0), "--temperature"),
                     (dict(ns=0.001, timestep_fs=0), "--timestep"), (dict(ns=1e-7), "shorter than one frame")):
        with pytest.raises(InputError, match=flag):
            run_md(MDSettings(system="aldp", **kw), tmp_path / "m.h5", show_progress=False)
    with pytest.raises(InputError, match="--replicas"):
        run_md(MDSettings(system="aldp", ns=0.001), tmp_path / "m.h5", replicas=0, show_progress=False)
    assert not list(tmp_path.iterdir())


def test_a_system_file_with_a_negative_temperature(capsys, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nkind: openmm\npdb: {PDB}\nforcefield: [amber99sbildn.xml]\ntemperature: -300\n")
    fails(capsys, ["energy", spec, PDB], str(spec), "temperature", "-300", "positive")


@pytest.mark.parametrize("override, key", [("train.lr.value=0", "train.lr.value"), ("train.iterations=-5", "train.iterations"),
                                           ("train.batch=-8", "train.batch"), ("train.batch=0", "train.batch"),
                                           ("train.lr.value=.nan", "train.lr.value"), ("train.ema=1.5", "train.ema"),
                                           ("model.hidden=0", "model.hidden"), ("train.n_base=12", "train.n_base"),
                                           ("train.hinge.iterations=0", "train.hinge.iterations")])
def test_config_values_out_of_range(capsys, tmp_path, override, key):
    out = tmp_path / "run"
    fails(capsys, ["train", TINY, "--out", out, "--quiet", "--set", override], key, str(TINY))
    assert not out.exists()                      # no config.json or log.jsonl left behind


@pytest.mark.parametrize("argv, flag", [
    (["md", "aldp", "--ns", "-1"], "--ns"), (["md", "aldp", "--ns", "0"], "--ns"),
    (["md", "aldp", "--ns", "1", "--replicas", "0"], "--replicas"),
    (["md", "aldp", "--ns", "1", "--report-every", "0"], "--report-every"),
    (["sample", "x.pt", "--n", "0", "--out", "s.npz"], "--n"),
    (["sample", "x.pt", "--n", "2.5", "--out", "s.npz"], "--n"),
    (["sample", "x.pt", "--n", "1", "--batch-size", "0", "--out", "s.npz"], "--batch-size"),
    (["train", str(TINY), "--iterations", "0"], "--iterations"),
    (["umbrella", "aldp", "--windows", "0"], "--windows"),
    (["umbrella", "aldp", "--kappa", "-1"], "--kappa"),
    (["umbrella", "aldp", "--residue", "0"], "--residue"), (["umbrella", "ala3", "--residue", "4"], "--residue"),
    (["mcmc", "gmm40", "--chains", "0"], "--chains"),
    (["quickstart", "--n", "-3"], "--n"),
])
def test_flags_out_of_range(capsys, tmp_path, argv, flag):
    os.chdir(tmp_path)
    fails(capsys, argv, flag)
    assert not list(tmp_path.iterdir())


def test_mcmc_ladder_must_start_at_one_and_increase(capsys, tmp_path):
    fails(capsys, ["mcmc", "gmm40", "--temperatures", "1", "0.5", "--out", tmp_path / "m.npz"], "--temperatures")


# --------------------------------------------------------------------------- resume continues to the run's target

def _wait_for(predicate, timeout=120.0):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.05)


def test_ctrl_c_during_training_saves_and_resume_reaches_the_runs_own_target(capsys, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "molsample.cli", "train", str(TINY), "--out", str(out),
                             "--iterations", "60", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    _wait_for(lambda: log.is_file() and log.read_text().count("\n") >= 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err, err
    ckpt = read_checkpoint(out / "checkpoint.pt")
    done = ckpt["state"]["iteration"]
    assert 3 <= done < 60 and ckpt["config"]["train"]["iterations"] == 60
    assert len(log.read_text().splitlines()) == done          # the log ends where the checkpoint does
    fails(capsys, ["train", TINY, "--out", out, "--resume", "--quiet", "--iterations", str(done - 1)],
          "--iterations", "already done")
    # --resume without --iterations continues to the run's own 60, not the config file's 20
    assert main(["train", str(TINY), "--out", str(out), "--resume", "--quiet"]) == 0
    assert read_checkpoint(out / "checkpoint.pt")["state"]["iteration"] == 60
    assert json.loads((out / "config.json").read_text())["train"]["iterations"] == 60


def test_ctrl_c_during_md_keeps_every_frame_and_resume_equals_an_uninterrupted_run(tmp_path):
    args = ["md", "aldp", "--ns", "0.1", "--report-every", "50", "--equilibration", "0.02", "--chunk-frames",
            "400", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a.h5")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "molsample.cli", *args, "--out", str(tmp_path / "b.h5")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / "b.h5.parts" / "r0" / "chunk_000000400.npz").is_file())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "--resume" in err, err
    assert not (tmp_path / "b.h5").exists()
    assert main(args + ["--out", str(tmp_path / "b.h5"), "--resume"]) == 0
    a, b = mdtraj.load(str(tmp_path / "a.h5")), mdtraj.load(str(tmp_path / "b.h5"))
    assert a.n_frames == b.n_frames == 2000
    assert np.array_equal(a.xyz, b.xyz)          # same seed: the interruption lost and duplicated nothing



def _children(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_sigterm_to_umbrella_stops_its_workers_and_a_rerun_reuses_the_windows(tmp_path):
    # a scheduler's SIGTERM reaches the parent alone: its chain workers must stop too, not run on unattended
    out = tmp_path / "u.npz"
    args = ["umbrella", "aldp", "--windows", "4", "--kappa", "5", "--ns-per-window", "0.02", "--equilibration", "1",
            "--steer", "1", "--workers", "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "molsample.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    windows = tmp_path / "u.windows"
    _wait_for(lambda: windows.is_dir() and len(_children(proc.pid)) >= 2)
    workers = _children(proc.pid)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "interrupted" in err and "run the same command" in err, err
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=30)
    assert not out.exists()
    kept = sorted(windows.glob("window_*.npz"))
    assert len(kept) < 4
    assert main(args) == 0                          # the rerun reuses the finished windows and completes
    assert len(list(windows.glob("window_*.npz"))) == 4 and out.is_file()


# --------------------------------------------------------------------------- unreadable inputs

def _empty_h5(path, topology):
    with mdtraj.formats.HDF5TrajectoryFile(str(path), "w") as f:
        f.topology = topology
    return path


@pytest.mark.parametrize("kind", ["empty-npz", "garbage-pdb", "truncated-pdb", "not-zip-npz", "pickled-npz",
                                  "npy-as-npz", "empty-h5", "garbage-dcd"])
def test_energy_of_an_unreadable_file(capsys, tmp_path, kind):
    target = load_target("aldp")
    if kind == "empty-npz":
        path = tmp_path / "e.npz"
        np.savez(path, xyz=np.zeros((0, 22, 3)))
        words = ("no frames",)
    elif kind == "garbage-pdb":
        path = tmp_path / "g.pdb"
        path.write_text("this is not\na pdb file\n")
        words = ("no ATOM or HETATM records",)
    elif kind == "truncated-pdb":
        path = tmp_path / "t.pdb"
        lines = PDB.read_text().splitlines()
        n = next(i for i, line in enumerate(lines) if line.startswith("ATOM")) + 3
        lines[n] = lines[n][:40]
        path.write_text("\n".join(lines) + "\n")
        words = (f"line {n + 1}", "not numbers")
    elif kind == "not-zip-npz":
        path = tmp_path / "n.npz"
        path.write_bytes(b"\x00garbage bytes, not an archive" * 10)
        words = ("not an .npz archive",)
    elif kind == "pickled-npz":
        path = tmp_path / "p.npz"
        np.savez(path, xyz=np.array([{"a": 1}], dtype=object))
        words = ("unpickling",)
    elif kind == "npy-as-npz":
        path = tmp_path / "a.npz"
        with open(path, "wb") as f:
            np.save(f, np.zeros((1, 22, 3)))
        words = ("a single .npy array",)
    elif kind == "empty-h5":
        path = _empty_h5(tmp_path / "e.h5", target.topology)
        words = ()
    else:
        path = tmp_path / "g.dcd"
        path.write_bytes(b"garbage" * 20)
        words = ("not a readable .dcd trajectory",)
    fails(capsys, ["energy", "aldp", path], str(path), *words)


@pytest.mark.parametrize("role", ["samples", "reference"])
@pytest.mark.parametrize("kind", ["npz", "h5"])
def test_compare_with_an_empty_file(capsys, tmp_path, aldp_conformations, role, kind):
    target = load_target("aldp")
    good = tmp_path / "good.h5"
    mdtraj.Trajectory(aldp_conformations[:20], target.topology).save_hdf5(str(good))
    if kind == "npz":
        empty = tmp_path / "empty.npz"
        np.savez(empty, x=np.zeros((0, 22, 3)), log_w=np.zeros(0), meta=json.dumps({"system": "aldp"}))
    else:
        empty = _empty_h5(tmp_path / "empty.h5", target.topology)
    samples, ref = (empty, good) if role == "samples" else (good, empty)
    out = tmp_path / "cmp"
    fails(capsys, ["compare", samples, "--reference", ref, "--system", "aldp", "--out", out], str(empty))
    assert not out.exists()


def test_pdb_positions_are_read_at_full_precision():
    from openmm import app, unit
    xyz = read_positions(PDB, (22, 3), load_target("aldp").topology)
    exact = app.PDBFile(str(PDB)).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert xyz.dtype == np.float64 and np.array_equal(xyz[0], np.asarray(exact))
    assert not np.array_equal(xyz[0], mdtraj.load(str(PDB)).xyz[0].astype(np.float64))   # not float32


# --------------------------------------------------------------------------- outputs, devices, platforms

def _blocked(tmp_path):
    """A path that cannot be written even by root: its 'directory' is a regular file."""
    (tmp_path / "afile").write_text("")
    return tmp_path / "afile" / "sub"


@pytest.mark.parametrize("command", ["md", "train", "sample", "umbrella", "compare", "quickstart"])
def test_an_output_that_cannot_be_written_is_refused_before_work(capsys, tmp_path, checkpoint, command):
    bad = _blocked(tmp_path)
    argv = {"md": ["md", "aldp", "--ns", "0.001", "--out", bad / "m.h5", *MD_FAST],
            "train": ["train", TINY, "--out", bad, "--quiet"],
            "sample": ["sample", checkpoint, "--n", "4", "--out", bad / "s.npz"],
            "umbrella": ["umbrella", "aldp", "--out", bad / "u.npz"],
            "compare": ["compare", PDB, "--reference", PDB, "--system", "aldp", "--out", bad],
            "quickstart": ["quickstart", "--out", bad, "--quiet"]}[command]
    fails(capsys, argv, "cannot write there", str(bad))


def test_an_output_format_mdtraj_cannot_write_under_a_non_ascii_path(capsys, tmp_path):
    for suffix in (".dcd", ".xtc"):
        fails(capsys, ["md", "aldp", "--ns", "0.001", "--out", tmp_path / "donnée" / f"m{suffix}", *MD_FAST],
              "ASCII", suffix)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "sample", "quickstart"])
def test_device_cuda_without_a_gpu(capsys, tmp_path, checkpoint, command):
    argv = {"train": ["train", TINY, "--out", tmp_path / "r", "--quiet", "--device", "cuda"],
            "sample": ["sample", checkpoint, "--n", "4", "--out", tmp_path / "s.npz", "--device", "cuda"],
            "quickstart": ["quickstart", "--out", tmp_path / "q", "--quiet", "--device", "cuda"]}[command]
    fails(capsys, argv, "--device cuda", "no CUDA device")
    fails(capsys, argv[:-1] + ["gpu0"], "--device", "gpu0")
    assert not list(tmp_path.iterdir())


def _has_platform(name):
    import openmm
    return name in [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


@pytest.mark.skipif(_has_platform("CUDA"), reason="this machine has OpenMM's CUDA platform")
@pytest.mark.parametrize("command", ["md", "energy", "umbrella"])
def test_platform_cuda_without_it(capsys, tmp_path, command):
    argv = {"md": ["md", "aldp", "--ns", "0.001", "--out", tmp_path / "m.h5", *MD_FAST],
            "energy": ["energy", "aldp", PDB, "--backend", "openmm"],
            "umbrella": ["umbrella", "aldp", "--out", tmp_path / "u.npz"]}[command]
    fails(capsys, argv + ["--platform", "CUDA"], "--platform CUDA", "Reference")
    assert not list(tmp_path.iterdir())


def test_traj_for_a_system_without_topology_is_refused_before_sampling(capsys, tmp_path, checkpoint):
    out = tmp_path / "s.npz"
    fails(capsys, ["sample", checkpoint, "--n", "64", "--out", out, "--traj", tmp_path / "s.pdb"], "--traj",
          "no topology")
    assert not out.exists()


def test_sample_output_must_be_npz_and_an_existing_file_survives_bad_input(capsys, tmp_path, checkpoint):
    fails(capsys, ["sample", checkpoint, "--n", "4", "--out", tmp_path / "s.txt"], "--out", ".npz")
    keep = tmp_path / "keep.npz"
    keep.write_bytes(b"precious")
    fails(capsys, ["sample", tmp_path / "missing.pt", "--n", "4", "--out", keep], "missing.pt")
    assert keep.read_bytes() == b"precious"


# --------------------------------------------------------------------------- md runs on one output

def test_parts_of_h5_and_dcd_outputs_do_not_clash_and_a_failed_start_does_not_block(tmp_path):
    s = MDSettings(system="aldp", ns=0.001, report_every=20, equilibration_ps=0.02, chunk_frames=50)
    stale = tmp_path / "run.h5.parts"                 # a run that failed before its first frame
    stale.mkdir()
    (stale / "settings.json").write_text(json.dumps({"ns": -1}))
    run_md(s, tmp_path / "run.h5", show_progress=False)
    run_md(s, tmp_path / "run.dcd", show_progress=False)
    assert mdtraj.load(str(tmp_path / "run.h5")).n_frames == 50
    assert mdtraj.load(str(tmp_path / "run.dcd"), top=str(PDB)).n_frames == 50
    with pytest.raises(FileExistsError, match="--resume"):          # frames there: never thrown away
        run_md(s, tmp_path / "run.h5", show_progress=False)
    with pytest.raises(InputError, match="ns: 0.001 then, 0.002 now"):
        run_md(MDSettings(system="aldp", ns=0.002, report_every=20, equilibration_ps=0.02, chunk_frames=50),
               tmp_path / "run.h5", resume=True, show_progress=False)


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_md_on_the_same_output_is_refused_while_the_first_runs(capsys, tmp_path, resume):
    out = tmp_path / "m.h5"
    (tmp_path / "m.h5.parts").mkdir()
    with RunLock(tmp_path / "m.h5.parts" / ".lock", "test"):     # the first run holds it
        fails(capsys, ["md", "aldp", "--ns", "0.001", "--out", out, *MD_FAST] + (["--resume"] if resume else []),
              "in use by a run that is still going", str(os.getpid()))
    assert not out.exists()


def test_a_second_train_on_the_same_output_is_refused_while_the_first_runs(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out / ".lock", "test"):
        fails(capsys, ["train", TINY, "--out", out, "--quiet"], "in use")


# --------------------------------------------------------------------------- no banners

def test_no_library_banners_on_import_or_run(tmp_path):
    code = ("import molsample.umbrella, molsample.estimate, molsample.analysis.compare, molsample.md; "
            "import pymbar, pymbar.timeseries; from pymbar import MBAR; "
            "from pymbar.timeseries import statistical_inefficiency; import numpy as np; "
            "statistical_inefficiency(np.random.default_rng(0).normal(size=500))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "" and res.stdout.strip() == "", res.stderr + res.stdout


def test_reading_a_dcd_prints_nothing(tmp_path):
    """mdtraj's C DCD reader prints 'dcdplugin) ...' lines on standard output; molsample silences them."""
    code = ("import numpy as np, mdtraj; from molsample.targets import load_target; "
            "from molsample.io import read_positions; t = load_target('aldp'); "
            f"mdtraj.Trajectory(np.zeros((3, 22, 3), np.float32) + np.arange(22)[:, None] * 0.1, t.topology)"
            f".save({str(tmp_path / 'a.dcd')!r}); "
            f"x = read_positions({str(tmp_path / 'a.dcd')!r}, (22, 3), t.topology); assert x.shape == (3, 22, 3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "dcdplugin" not in res.stdout + res.stderr and res.stdout.strip() == "", res.stdout


@pytest.mark.parametrize("command", ["md", "train", "sample"])
def test_a_permission_error_on_the_output_is_one_line(capsys, tmp_path, checkpoint, monkeypatch, command):
    """As root no folder is unwritable, so the write probe is made to fail as it would for a user."""
    import pathlib

    def denied(self, data):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(pathlib.Path, "write_bytes", denied)
    argv = {"md": ["md", "aldp", "--ns", "0.001", "--out", tmp_path / "m.h5", *MD_FAST],
            "train": ["train", TINY, "--out", tmp_path / "run", "--quiet"],
            "sample": ["sample", checkpoint, "--n", "4", "--out", tmp_path / "s.npz"]}[command]
    fails(capsys, argv, "cannot write there", "Permission denied")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("system", ["gmm40", "lj13"])
def test_umbrella_of_a_system_without_backbone_dihedrals_is_refused_before_any_window(capsys, tmp_path, system):
    fails(capsys, ["umbrella", system, "--out", tmp_path / "u.npz"], system, "OpenMM force field")
    assert not list(tmp_path.iterdir())
