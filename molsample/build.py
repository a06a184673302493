"""Build the objects of an experiment from its typed config (target, space, prior, model)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ExperimentConfig
from .flow import CosineSchedule, DirectVelocity, DriftVelocity, HarmonicPrior, Prior, Space
from .nn import LangevinDrift, MLPCore
from .nn.equivariant import EquivariantCore, molecule_types
from .targets import Target, load_target


@dataclass
class Experiment:
    config: ExperimentConfig
    target: Target
    space: Space
    prior: Prior
    schedule: CosineSchedule
    model: torch.nn.Module
    dtype: torch.dtype
    device: torch.device

    @property
    def route(self) -> str:
        return self.config.route

    def velocity(self, model: torch.nn.Module | None = None):
        """The step velocity b(x, t, d): b = 0.5 sigma u + 0.5 beta x for the energy route (u the
        Langevin-preconditioned drift), the network itself for the data route."""
        model = model if model is not None else self.model
        if self.route == "data":
            return DirectVelocity(model)
        return DriftVelocity(model, self.schedule)


def particle_types(target: Target):
    """Node and edge types for the equivariant core: force-field types for molecules, one type
    for identical particles (LJ, DW4)."""
    if target.n_particles is None:
        raise ValueError(f"model kind 'egnn' needs a particle target; {target.name!r} has event shape "
                         f"{target.event_shape}")
    if target.identical_particles:
        return [0] * target.n_particles, None
    return molecule_types(target)


def build_model(cfg: ExperimentConfig, target: Target, space: Space, prior: Prior,
                schedule: CosineSchedule) -> torch.nn.Module:
    m = cfg.model
    n_base = cfg.train.n_base
    with torch.random.fork_rng(devices=[]):       # deterministic init without touching global RNG state
        torch.manual_seed(cfg.seed)
        if m.kind == "mlp":
            core = MLPCore(space, m.hidden, m.layers, m.n_freq, n_base)
        elif m.kind == "egnn":
            node, edge = particle_types(target)
            core = EquivariantCore(space, node, edge, m.hidden, m.layers, m.n_rbf, m.r_max, m.n_freq, n_base)
        else:
            raise ValueError(f"unknown model kind {m.kind!r}")
        if cfg.route == "data":
            return core
        return LangevinDrift(core, target, prior, schedule, m.langevin_clip, m.n_freq, n_base)


def build_prior(cfg: ExperimentConfig, target: Target, space: Space, s0: float) -> Prior:
    if cfg.prior.kind == "isotropic":
        return Prior(space, s0)
    topology = target.topology
    if topology is None:
        raise ValueError(f"prior kind 'harmonic' needs a molecule with bonds; {target.name!r} has no topology")
    bonds = [(a.index, b.index) for a, b in topology.bonds]
    return HarmonicPrior(space, s0, bonds, cfg.prior.bond_scale)


def build(cfg: ExperimentConfig, device: str | torch.device = "cpu") -> Experiment:
    target = load_target(cfg.target)
    space = Space(target.event_shape, target.com_free)
    schedule = CosineSchedule(**vars(cfg.schedule))
    prior = build_prior(cfg, target, space, schedule.s0)
    dtype = getattr(torch, cfg.dtype)
    device = torch.device(device)
    model = build_model(cfg, target, space, prior, schedule).to(dtype=dtype, device=device)
    return Experiment(cfg, target, space, prior, schedule, model, dtype, device)
