"""What a training batch is on each Cartesian route and its base loss: the energy route's SDE paths and diffusion
loss, the data route's frames, prior partners and flow-matching loss (with the frames sharded over ranks).
:class:`molsample.train.Trainer` does the rest of an iteration for both."""
from __future__ import annotations

import typing

import numpy as np
import torch

from . import align, losses, sde
from .build import Experiment
from .distributed import SINGLE, Group
from .estimate import ess as ess_estimate
from .io import InputError

if typing.TYPE_CHECKING:
    from .train import Trainer


class EnergyRoute:
    """The data-free route (docs/method.md): a batch is a path of the SDE sampler from the prior,
    simulated with the network; its base loss is the diffusion loss (discrete reverse KL or log-variance)."""
    scale = 1.0

    def draw(self, trainer: Trainer, n: int, gen: torch.Generator) -> dict:
        exp, cfg = trainer.exp, trainer.cfg
        path = sde.simulate_path(exp.model, exp.schedule, exp.prior, exp.target, n, cfg.n_base, gen,
                                 exp.dtype, exp.device, differentiable=cfg.diffusion_loss == "kl",
                                 score_fixed=cfg.detach_score, noise_scale=cfg.explore_noise)
        return {"path": path}

    def distillation_rows(self, cfg, n: int) -> int:
        """train.distill.batch rows of big steps (from the path's rows in turn)."""
        return cfg.distill.batch

    def path_states(self, batch: dict, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The path's states at the big steps' start times (rows taken in turn)."""
        states = batch["path"].states
        return states[index, torch.arange(len(t)) % states.shape[1]]

    def base_loss(self, trainer: Trainer, batch: dict) -> tuple[torch.Tensor, dict]:
        exp, cfg, path = trainer.exp, trainer.cfg, batch["path"]
        if cfg.diffusion_loss == "kl":
            l_diff = losses.kl_loss(path)
        else:
            l_diff = losses.log_variance_loss(exp.model, exp.schedule, exp.prior, exp.target, path, cfg.detach_score)
        logs = {"diff": l_diff.item()}
        if cfg.explore_noise == 1.0:        # on-policy paths: their log w give the ELBO and the path ESS
            logs.update(elbo=path.log_w.mean().item(),
                        path_ess=float(ess_estimate(path.log_w.detach().cpu().numpy(), n_boot=0).value))
        return l_diff, logs


class DataRoute:
    """The data-assisted route (docs/method.md, "What molsample adds"): the base flow is learned by flow
    matching on reference frames (linear interpolant from the prior, optional minibatch OT coupling)
    at the base step size 1/N_base; larger steps are self-distilled from it with the same losses as
    the data-free route. Under several processes each rank holds a shard of the frames (every
    world-th one, from its rank on) and ``scale`` (world x its shard's share of the frame weight)
    makes the mean of the ranks' losses that of all frames."""

    def __init__(self, exp: Experiment, group: Group = SINGLE):
        from .data import FrameSampler, load_frames
        dc = exp.config.data
        if dc.align != "none" and exp.target.n_particles is None:
            raise ValueError(f"data.align: {dc.align!r} needs a particle system; {exp.target.name!r} has event shape "
                             f"{tuple(exp.target.event_shape)}")
        if dc.align == "rotation-permutation" and not exp.target.identical_particles:
            raise ValueError(f"data.align: 'rotation-permutation' relabels identical particles; the atoms of "
                             f"{exp.target.name!r} are not interchangeable (use 'rotation')")
        x, lw = load_frames(dc.path, exp.target)
        self.scale = 1.0
        if group.parallel:
            keep = np.arange(group.rank, len(x), group.world)
            if len(keep) == 0:
                raise InputError(f"data.path {dc.path}: {len(x)} frames cannot be shared by {group.world} processes")
            lp = dc.weight_power * np.asarray(lw, dtype=np.float64)
            self.scale = float(group.world * np.exp(np.logaddexp.reduce(lp[keep]) - np.logaddexp.reduce(lp)))
            x, lw = x[keep], np.asarray(lw)[keep]
        self.frames = FrameSampler(x, lw, exp.space, dc.weight_power, dc.mirror, exp.dtype, exp.device)

    def draw(self, trainer: Trainer, n: int, gen: torch.Generator) -> dict:
        """Frames, prior draws (OT-coupled and aligned within these n rows) and interpolation times."""
        exp, dc = trainer.exp, trainer.exp.config.data
        x1 = self.frames.sample(n, gen)
        x0 = exp.prior.sample(n, gen, dtype=exp.dtype).to(exp.device)
        if dc.ot_coupling:
            x0 = align.ot_coupling(x0, x1)
        if dc.align != "none":
            x1 = align.align_pairs(x0, x1, permute=dc.align == "rotation-permutation")
        t = torch.rand(n, generator=gen, dtype=torch.float64).to(exp.dtype).to(exp.device)
        return {"x0": x0, "x1": x1, "t": t}

    def distillation_rows(self, cfg, n: int) -> int:
        """train.distill.batch rows of big steps, at most the batch's (they start on its first rows)."""
        return min(cfg.distill.batch, n)

    def path_states(self, batch: dict, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Points of the interpolant at the big steps' start times (the batch's first rows)."""
        m = len(t)
        return losses.interpolate(batch["x0"][:m], batch["x1"][:m], t)

    def base_loss(self, trainer: Trainer, batch: dict) -> tuple[torch.Tensor, dict]:
        exp, cfg = trainer.exp, trainer.cfg
        l_fm = losses.flow_matching_loss(exp.velocity(), batch["x0"], batch["x1"], batch["t"],
                                         1.0 / cfg.n_base) / exp.schedule.s0**2
        return exp.config.data.fm_weight * l_fm, {"fm": l_fm.item()}
