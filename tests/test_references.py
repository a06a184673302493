"""The states used by every tool, packed references (umbrella and replica exchange), their combination
over independent runs, the 'not sampled' rule for plain MD, and the systems' default references."""
import json
import math

import mdtraj
import numpy as np
import pytest
import torch

from molsample.analysis.basins import BASINS, basin_indicators, phi_positive
from molsample.analysis.compare import MIN_INDEPENDENT_IN_STATE, md_independent_in_state, state_estimates
from molsample.analysis.ensembles import Ensemble, load_ensemble
from molsample.analysis.reference import combine_estimates, pack_weighted
from molsample.io import reference_method
from molsample.targets import load_target
from molsample.targets.openmm_target import kt_kj_per_mol

from conftest import ROOT

DF = "dF_phi_positive_minus_negative_kT"


def test_state_definitions_partition_the_torus_and_agree_with_phi_positive():
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-4 * math.pi, 4 * math.pi, (2, 20000))        # any representation of the angle
    ind = basin_indicators(phi, psi)
    total = sum(ind[b].astype(int) for b in BASINS)
    assert np.all(total == 1)                                            # a partition
    pos = phi_positive(phi)
    assert np.array_equal(ind["alpha_L"] | ind["C7ax"], pos)
    wrapped = (phi + math.pi) % (2 * math.pi) - math.pi
    assert np.array_equal(pos, (wrapped > 0) & (wrapped < math.pi))
    # the edges: 0 and pi (= -pi) belong to phi < 0; a hair inside belongs to phi > 0
    edges = np.array([0.0, math.pi, -math.pi, 1e-9, math.pi - 1e-9, -1e-9, 2 * math.pi + 0.5])
    assert phi_positive(edges).tolist() == [False, False, False, True, True, False, True]
    # psi boundaries of the basins in degrees
    d = np.radians
    assert basin_indicators(d(np.array([-60.0, -60.0, -60.0])), d(np.array([-119.99, 49.99, 50.01])))["alpha_R"].tolist() \
        == [True, True, False]
    assert basin_indicators(d(np.array([60.0, 60.0])), d(np.array([0.0, -0.1])))["alpha_L"].tolist() == [True, False]


def test_combine_estimates_is_the_mean_over_runs_and_keeps_each_run():
    run = lambda v, s: {"dF_phi_positive_minus_negative_kT": {"value": v, "stderr": s},
                        "p_phi_positive": {"value": 1 / (1 + math.exp(v)), "stderr": 0.01},
                        "basins": {b: {"value": 0.25, "stderr": s / 10} for b in BASINS}}
    out = combine_estimates([run(3.0, 0.1), run(4.0, 0.2)])
    d = out["dF_phi_positive_minus_negative_kT"]
    assert math.isclose(d["value"], 3.5) and math.isclose(d["stderr"], math.sqrt(0.1 ** 2 + 0.2 ** 2) / 2)
    assert [r["dF_phi_positive_minus_negative_kT"]["value"] for r in out["runs"]] == [3.0, 4.0]
    # a run's block-bootstrap error, when larger than MBAR's, is the one used
    a = run(3.0, 0.1)
    a["dF_phi_positive_minus_negative_kT"]["stderr_bootstrap"] = 0.3
    out = combine_estimates([a, run(3.0, 0.3)])
    assert math.isclose(out["dF_phi_positive_minus_negative_kT"]["stderr"], 0.3 / math.sqrt(2))


# one coordinate x: an asymmetric double well (kJ/mol) whose sign stands in for the sign of phi
S, A, B = 0.05, 3.0, 1.0


def _u(x):
    return A * ((x / S) ** 2 - 1) ** 2 + B * x / S


def _exact_p_positive(temperature):
    g = np.linspace(-6 * S, 6 * S, 200001)
    w = np.exp(-(_u(g) - _u(g).min()) / kt_kj_per_mol(temperature))
    return w[g > 0].sum() / w.sum()


def _fake_pt_run(path, seed, temps=(300.0, 360.0, 430.0, 520.0), n=3000):
    """A replica-exchange output file made of independent exact samples at each temperature, with the
    MBAR f_k of those samples: what `molsample pt` writes, with the dynamics replaced by exact draws."""
    from pymbar import MBAR
    rng = np.random.default_rng(seed)
    grid = np.linspace(-6 * S, 6 * S, 40001)
    xs = []
    for t in temps:
        w = np.exp(-(_u(grid) - _u(grid).min()) / kt_kj_per_mol(t))
        xs.append(rng.choice(grid, n, p=w / w.sum()))
    x = np.stack(xs, axis=1)
    energy = _u(x)
    kt = np.array([kt_kj_per_mol(t) for t in temps])
    mbar = MBAR(energy.T.reshape(1, -1) / kt[:, None], np.full(len(temps), n), verbose=False)
    phi = np.where(x > 0, 1.0, -1.0) + 0.1 * rng.uniform(-1, 1, x.shape)      # phi > 0 exactly when x > 0
    psi = rng.uniform(-math.pi, math.pi, x.shape)
    np.savez(path, energy_kj_per_mol=energy, temperatures_K=np.array(temps), phi=phi, psi=psi,
             frames_xyz=np.zeros((50, 22, 3), np.float32))
    p = float((x[:, 0] > 0).mean())
    est = {"temperature_K": 300.0, "mbar": {"f_k": mbar.f_k.tolist()},
           "dF_phi_positive_minus_negative_kT": {"value": -math.log(p / (1 - p)), "stderr": 0.1},
           "p_phi_positive": {"value": p, "stderr": 0.01},
           "basins": {b: {"value": 0.25, "stderr": 0.01} for b in BASINS}}
    path.with_suffix(".json").write_text(json.dumps({"estimates": est, "settings": {"seed": seed}}))


def test_packed_replica_exchange_weights_reproduce_the_closed_form(tmp_path):
    for seed in (1, 2):
        _fake_pt_run(tmp_path / f"r{seed}.npz", seed)
    target = load_target("aldp-vacuum")
    out = pack_weighted("replica-exchange", [tmp_path / "r1.npz", tmp_path / "r2.npz"], target, tmp_path / "p.npz",
                        n_frames=40)
    ens = load_ensemble([out], target)
    assert ens.kind == "replica-exchange" and len(ens.phi) == 2 * 4 * 3000 and len(ens.x) == 40
    w = np.exp(ens.angle_log_w)
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-9)
    half = len(w) // 2
    assert math.isclose(w[:half].sum(), 0.5, rel_tol=1e-9)                 # each run carries half the weight
    p = float(w[phi_positive(ens.phi)].sum())
    # every temperature reweighted to 300 K: the closed form, to the accuracy of 24,000 samples
    exact = _exact_p_positive(300.0)
    assert abs(p - exact) < 0.01, (p, exact)
    # ... and not the answer at another rung (the check can fail)
    assert abs(p - _exact_p_positive(520.0)) > 0.03
    assert len(ens.external["runs"]) == 2


def test_plain_md_that_never_crossed_reports_not_sampled(tmp_path, capsys):
    ref = load_ensemble([ROOT / "systems/aldp/reference/aldp_md_2x50ns.npz"], load_target("aldp"))
    est = state_estimates(ref)
    d = est["dF_phi_positive_minus_negative_kT"]
    assert d["value"] is None and d["sampled"] is False and "not sampled" in d["note"]
    assert est["basins"]["C7ax"]["value"] is None and est["basins"]["alpha_R"]["value"] > 0.3
    # a correlated series with many visits gets a number with an error bar
    rng = np.random.default_rng(0)
    runs = np.repeat(rng.random(4000) < 0.2, 5)                             # 20,000 frames, visits of 5 frames
    assert md_independent_in_state(runs, [10000, 10000]) > MIN_INDEPENDENT_IN_STATE
    phi = np.where(runs, 1.0, -1.0)
    ens = Ensemble("md", "md", None, np.zeros(len(phi)), phi=phi, psi=np.zeros(len(phi)), segments=[10000, 10000])
    e = state_estimates(ens)["dF_phi_positive_minus_negative_kT"]
    assert abs(e["value"] - (-math.log(runs.mean() / (1 - runs.mean())))) < 1e-9 and e["stderr"] > 0


def test_a_system_with_a_missing_reference_file_is_refused(tmp_path, capsys):
    src = (ROOT / "systems/aldp/aldp.yaml").read_text()
    lines = [ln for ln in src.splitlines() if not ln.startswith("reference:")]
    (tmp_path / "aldp.pdb").write_text((ROOT / "systems/aldp/aldp.pdb").read_text())
    (tmp_path / "x.yaml").write_text("\n".join(lines + ["reference: reference/nothing.npz"]) + "\n")
    from molsample.config import ConfigError
    from molsample.targets.registry import default_reference
    with pytest.raises(ConfigError, match="nothing.npz"):
        default_reference(tmp_path / "x.yaml")


def test_a_packed_reference_extended_by_more_runs_keeps_every_run_and_their_mean(tmp_path):
    """A packed file given to pack_weighted adds its runs: re-packing the shipped n-run 2D umbrella alone
    gives back its figures and weights; packing it twice gives 2n runs with the same mean and an error
    sqrt(2) smaller, the pooled samples sharing the weight equally."""
    from molsample.analysis.reference import load_packed_runs, pack_weighted
    src = ROOT / "systems" / "aldp" / "reference" / "aldp_umbrella_2d_30x18.npz"
    target = load_target("aldp")
    orig = np.load(src)
    e0 = json.loads(str(orig["estimates"]))
    runs = load_packed_runs(src)
    n = len(e0["runs"])
    assert n >= 2 and [r["share"] for r in runs] == [n] + [0] * (n - 1)
    one = np.load(pack_weighted("umbrella", [src], target, tmp_path / "one.npz", n_frames=400))
    e1 = json.loads(str(one["estimates"]))
    assert len(e1["runs"]) == n
    # written by io.save_samples: kind 'reference' with its schema, the method beside it (the shipped file, older,
    # keeps the method in 'kind'); both read the same way
    assert str(one["kind"]) == "reference" and int(one["schema"]) == 1 and str(one["method"]) == "umbrella"
    assert reference_method(one) == reference_method(orig) == "umbrella"
    assert abs(e1[DF]["value"] - e0[DF]["value"]) < 1e-12 and abs(e1[DF]["stderr"] - e0[DF]["stderr"]) < 1e-12
    for b in e0["basins"]:
        assert abs(e1["basins"][b]["value"] - e0["basins"][b]["value"]) < 1e-12
    assert np.allclose(np.exp(one["log_w"]), np.exp(orig["log_w"] - np.logaddexp.reduce(orig["log_w"])), atol=1e-15)
    two = np.load(pack_weighted("umbrella", [src, src], target, tmp_path / "two.npz", n_frames=400))
    e2 = json.loads(str(two["estimates"]))
    assert len(e2["runs"]) == 2 * n and len(two["phi"]) == 2 * len(orig["phi"]) and len(two["frames_xyz"]) == 400
    assert abs(e2[DF]["value"] - e0[DF]["value"]) < 1e-12
    assert abs(e2[DF]["stderr"] * math.sqrt(2) - e0[DF]["stderr"]) < 1e-12
    assert abs(np.logaddexp.reduce(two["log_w"])) < 1e-12
    with pytest.raises(ValueError, match="not 'replica-exchange'"):
        pack_weighted("replica-exchange", [src], target, tmp_path / "bad.npz")


def test_shipped_md_reference_is_consistent():
    path = ROOT / "systems/aldp/reference/aldp_md_2x50ns.npz"
    assert path.stat().st_size < 5e6
    target = load_target("aldp")
    ens = load_ensemble([path], target)
    assert ens.kind == "md" and ens.segments == [50_000, 50_000] and len(ens.phi) == 100_000
    rows = np.load(path)["frames_row"]
    u = target.energy(torch.as_tensor(ens.x[:200], dtype=torch.float64)).numpy()
    assert np.allclose(u, ens.energy[rows[:200]], atol=2e-3)          # stored energies belong to the frames
    phi = mdtraj.compute_phi(mdtraj.Trajectory(ens.x[:200].astype(np.float32), target.topology))[1][:, 0]
    assert np.allclose(phi, ens.phi[rows[:200]], atol=1e-4)


@pytest.mark.parametrize("name", ["aldp_umbrella_phi_36x2ns.npz", "aldp_umbrella_2d_30x18.npz", "aldp_pt_2x10ns.npz",
                                  "aldp-vacuum_umbrella_2d_30x18.npz", "aldp-vacuum_pt_2x2ns.npz"])
def test_shipped_umbrella_reference_is_consistent(name):
    from molsample.analysis.compare import fraction
    path = ROOT / "systems/aldp/reference" / name
    assert path.stat().st_size < 5e6
    system = "aldp-vacuum" if name.startswith("aldp-vacuum") else "aldp"
    ens = load_ensemble([path], load_target(system))
    assert ens.kind in ("umbrella", "replica-exchange") and abs(np.exp(ens.angle_log_w).sum() - 1) < 1e-9
    # the subsampled, reweighted angles reproduce the MBAR estimates of the full runs
    from molsample.analysis.basins import basin_indicators, phi_positive
    p, _ = fraction(ens, phi_positive(ens.phi))
    ref = ens.external["p_phi_positive"]
    assert abs(p - ref["value"]) < 3 * ref["stderr"] + 1e-3
    ind = basin_indicators(ens.phi, ens.psi)
    for b, est in ens.external["basins"].items():
        assert abs(fraction(ens, ind[b])[0] - est["value"]) < 3 * est["stderr"] + 2e-3, b
    # the weighted conformations are Boltzmann-distributed: their phi > 0 share matches too (looser: 8000 frames;
    # replica exchange keeps the frames of the 300 K replica alone, a correlated series, so only umbrella files)
    if ens.kind != "umbrella":
        return
    with np.load(path) as d:
        w = np.exp(d["frames_log_w"] - d["frames_log_w"].max())
        x = d["frames_xyz"]
    import mdtraj
    phi = mdtraj.compute_phi(mdtraj.Trajectory(x, load_target(system).topology))[1][:, 0]
    pf = float((w * phi_positive(phi)).sum() / w.sum())
    assert abs(pf - ref["value"]) < max(0.3 * ref["value"], 0.004)
