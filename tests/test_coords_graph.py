"""The graph-network one-step map (map.kind: graph): its closed-form Jacobian against autograd, with and
without the distance gates; the identity at initialisation; the Lipschitz bound (a bijection) without
gates; periodicity in the torsions; one set of weights for any molecule; and the config and checkpoint
path through `molsample train` / `molsample sample`."""
import json
import math

import numpy as np
import pytest
import torch

from molsample.cli import main
from molsample.coords import InternalCoordinates
from molsample.coords.base import StructuredBase
from molsample.coords.config import ICMapConfig
from molsample.coords.flow import OneStepSampler
from molsample.coords.graph import GraphResidualMap
from molsample.coords.model import load_internal_checkpoint
from molsample.coords.target import InternalCoordinateTarget
from molsample.data import load_frames
from molsample.schema import ConfigError, from_dict
from molsample.targets import load_target

from conftest import ROOT

MD = ROOT / "systems" / "aldp" / "reference" / "aldp_md_2x50ns.npz"


@pytest.fixture(scope="module")
def aldp(aldp_md):
    cart, ic, x, lw = aldp_md
    base = StructuredBase.fit(ic, x, lw, cart.topology)
    return cart, base, InternalCoordinateTarget(cart, ic=ic)


def _opened(cart, base, rbf=0, seed=0, step_conditioned=False, hidden=8, layers=2):
    """A graph map far from the identity: gate open, random biases and distance gates."""
    flow = GraphResidualMap(cart, base, hidden=hidden, layers=layers, rbf=rbf, step_conditioned=step_conditioned,
                            generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        flow.gate.fill_(3.0)
        for p in list(flow.biases) + list(flow.conditioning):
            p.normal_(0, 0.5, generator=gen)
        if rbf:
            flow.gate_weights.normal_(0, 2.0, generator=gen)
            flow.gate_biases.normal_(0, 1.0, generator=gen)
    return flow


def _autograd_jacobian(flow, z, t=0.0, d=1.0):
    w = [x.detach() for x in flow.normalised()]
    rows = []
    for i, zi in enumerate(z):
        ti = t[i:i + 1] if isinstance(t, torch.Tensor) else t
        di = d[i:i + 1] if isinstance(d, torch.Tensor) else d
        rows.append(torch.autograd.functional.jacobian(lambda v: flow.velocity(v[None], w, ti, di)[0], zi))
    scale = d[:, None, None] if isinstance(d, torch.Tensor) else d
    return scale * torch.stack(rows)


@pytest.mark.parametrize("rbf", [0, 6])
def test_closed_form_jacobian_equals_autograd(aldp, rbf):
    cart, base, _ = aldp
    flow = _opened(cart, base, rbf=rbf, step_conditioned=True, layers=3)
    z, _ = base.sample_latent(5, torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.25, 0.5, 0.5, 0.75], dtype=z.dtype)
    d = torch.tensor([1.0, 0.25, 0.5, 0.25, 0.25], dtype=z.dtype)
    with torch.no_grad():
        jac = flow.jacobian(z, t=t, d=d, chunk=2)                 # chunks of 2: per-sample t, d cut right
    ref = _autograd_jacobian(flow, z, t, d)
    assert ref.abs().max() > 1e-4                                 # not the identity
    assert torch.allclose(jac, ref, atol=1e-12, rtol=0)


def test_at_initialisation_the_graph_map_is_the_identity(aldp):
    cart, base, target = aldp
    flow = GraphResidualMap(cart, base, hidden=8, layers=2, rbf=4, generator=torch.Generator().manual_seed(0))
    sampler = OneStepSampler(base, target, flow)
    with torch.no_grad():
        d = sampler.draw(200, torch.Generator().manual_seed(2))
    assert torch.equal(d["z0"], d["z1"])
    assert torch.allclose(base.log_prob(d["y"]), d["log_q"], atol=1e-9)


def test_without_distance_gates_the_drift_is_lipschitz_below_the_bound(aldp):
    cart, base, _ = aldp
    flow = _opened(cart, base, rbf=0, seed=3, hidden=16, layers=3)
    with torch.no_grad():
        for w in flow.weights:                                    # large weights: the normalisation must bite
            w.mul_(5.0)
    z, _ = base.sample_latent(32, torch.Generator().manual_seed(3))
    jac = flow.jacobian(z).detach()
    assert torch.linalg.matrix_norm(jac, ord=2).max() < flow.lipschitz
    assert torch.linalg.matrix_norm(jac, ord=2).max() > 1e-3      # it is not trivially small
    _, sign = flow.log_det(z)
    assert (sign > 0).all()


def test_the_graph_velocity_is_periodic_in_the_torsions(aldp):
    cart, base, _ = aldp
    flow = _opened(cart, base, rbf=6, seed=4)
    w = flow.normalised()
    z, _ = base.sample_latent(8, torch.Generator().manual_seed(4))
    shifted = z.clone()
    shifted[:, : flow.k] += 2 * math.pi * torch.randint(-2, 3, (8, flow.k), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(flow.velocity(z, w), flow.velocity(shifted, w), atol=1e-10)


def test_the_exact_log_det_carries_gradients_to_every_parameter(aldp):
    cart, base, _ = aldp
    flow = _opened(cart, base, rbf=4, seed=5)
    z, _ = base.sample_latent(8, torch.Generator().manual_seed(5))
    log_det, _ = flow.log_det(z)
    (log_det.sum() + flow.step(z).sum()).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_one_set_of_weights_serves_another_molecule(aldp):
    """No parameter's shape depends on the molecule: the alanine-dipeptide map's weights load into the
    map of the capped tetrapeptide (42 atoms) and give a finite drift with an exact Jacobian there."""
    cart, base, _ = aldp
    flow = _opened(cart, base, rbf=4, seed=6)
    ala3 = load_target("ala3")
    ic3 = InternalCoordinates(ala3.topology)
    x, lw = load_frames(ROOT / "systems" / "ala3" / "reference" / "ala3_pt_2x2ns.npz", ala3)
    base3 = StructuredBase.fit(ic3, x, lw, ala3.topology)
    other = GraphResidualMap(ala3, base3, hidden=8, layers=2, rbf=4)
    other.load_state_dict(flow.state_dict())
    z, _ = base3.sample_latent(2, torch.Generator().manual_seed(6))
    with torch.no_grad():
        jac = other.jacobian(z)
    assert jac.shape == (2, z.shape[1], z.shape[1]) and z.shape[1] == 3 * 42 - 6
    assert torch.allclose(jac, _autograd_jacobian(other, z), atol=1e-12, rtol=0)


def test_distance_gates_belong_to_the_graph_map():
    with pytest.raises(ConfigError, match="map.rbf"):
        ICMapConfig(kind="mlp", rbf=4)
    with pytest.raises(ConfigError, match="kind"):
        from_dict(ICMapConfig, {"kind": "gnn"}, "map")
    assert ICMapConfig(kind="graph", rbf=4).rbf == 4


def test_a_graph_model_trains_checkpoints_and_samples(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(json.dumps({"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]},
                               "map": {"kind": "graph", "hidden": 8, "layers": 2, "rbf": 4},
                               "train": {"iterations": 3, "batch": 16, "eval_every": 3, "eval_samples": 64,
                                         "checkpoint_every": 3}}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["eval_det_nonpositive"] == 0 and rows[-1]["gate"] != 0
    samples = tmp_path / "s.npz"
    assert main(["sample", str(out / "checkpoint.pt"), "--n", "100", "--out", str(samples), "--seed", "2"]) == 0
    sampler, _ = load_internal_checkpoint(out / "checkpoint.pt")
    assert isinstance(sampler.flow, GraphResidualMap)
    again = sampler.draw(100, torch.Generator().manual_seed(2))
    d = np.load(samples)
    assert np.allclose(again["x"].numpy(), d["x"]) and np.allclose(again["log_w"].numpy(), d["log_w"])
