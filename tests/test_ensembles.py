"""molsample.analysis.ensembles: chirality at CA and folding D onto L."""
import mdtraj
import numpy as np
import pytest

from molsample.analysis.ensembles import chirality_signs, fold_to_l
from molsample.targets import load_target


def test_folding_d_onto_l_restores_dihedrals():
    target = load_target("aldp")
    x = np.asarray(target.positions)[None]
    mirror = -x
    assert chirality_signs(x, target.topology)[0, 0] > 0 > chirality_signs(mirror, target.topology)[0, 0]
    folded, log_w, frac, removed = fold_to_l(np.concatenate([x, mirror]), target.topology, np.array([0.1, 0.2]))
    traj = lambda y: mdtraj.Trajectory(y.astype(np.float32), target.topology)
    assert frac == 0.5 and removed == 0.0 and np.allclose(log_w, [0.1, 0.2])
    phi_ref = mdtraj.compute_phi(traj(x))[1][0, 0]
    phi_mirror = mdtraj.compute_phi(traj(mirror))[1][0, 0]
    assert phi_mirror == pytest.approx(-phi_ref, abs=1e-5)
    assert np.allclose(mdtraj.compute_phi(traj(folded))[1][:, 0], phi_ref, atol=1e-5)
