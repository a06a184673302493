"""Build the objects of an experiment from its typed config (target, space, prior, model)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ExperimentConfig
from .flow import CosineSchedule, DriftVelocity, Prior, Space
from .nn import LangevinDrift, MLPCore
from .targets import Target, load_target


@dataclass
class Experiment:
    config: ExperimentConfig
    target: Target
    space: Space
    prior: Prior
    schedule: CosineSchedule
    model: LangevinDrift
    dtype: torch.dtype
    device: torch.device

    def velocity(self, model: LangevinDrift | None = None) -> DriftVelocity:
        return DriftVelocity(model if model is not None else self.model, self.schedule)


def build_model(cfg: ExperimentConfig, target: Target, space: Space, prior: Prior,
                schedule: CosineSchedule) -> LangevinDrift:
    m = cfg.model
    if m.kind != "mlp":
        raise ValueError(f"unknown model kind {m.kind!r}")
    n_base = cfg.train.n_base
    with torch.random.fork_rng(devices=[]):       # deterministic init without touching global RNG state
        torch.manual_seed(cfg.seed)
        core = MLPCore(space, m.hidden, m.layers, m.n_freq, n_base)
        return LangevinDrift(core, target, prior, schedule, m.langevin_clip, m.n_freq, n_base)


def build(cfg: ExperimentConfig, device: str | torch.device = "cpu") -> Experiment:
    target = load_target(cfg.target)
    space = Space(target.event_shape, target.com_free)
    schedule = CosineSchedule(**vars(cfg.schedule))
    prior = Prior(space, schedule.s0)
    dtype = getattr(torch, cfg.dtype)
    device = torch.device(device)
    model = build_model(cfg, target, space, prior, schedule).to(dtype=dtype, device=device)
    return Experiment(cfg, target, space, prior, schedule, model, dtype, device)
