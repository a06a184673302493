"""The training loop: diffusion loss + self-consistency + volume consistency + Jacobian penalty,
AdamW, EMA teacher, atomic checkpoints, resume, progress bar. Receives built objects."""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import jacobian, losses
from .build import Experiment, build
from .distributed import SINGLE, Group, restore_stream, stream_seed
from .config import ExperimentConfig, learning_rate
from .estimate import ess as ess_estimate, log_z as log_z_estimate
from .checkpoint import (CHECKPOINT, atomic_save, config_difference, export_model, load_checkpoint, load_weights,
                         saved_config)
from .io import InputError, check_output_dir, read_checkpoint
from .jacobian import monotonicity, residual_ratio
from .sampler import integrate, sample
from .runtime import Interrupted, RunLock, stop_on_signal
from .routes import DataRoute, EnergyRoute
from .targets import NonFinitePositionsError

__all__ = ["CHECKPOINT", "TrainState", "Trainer", "TrainingDiverged", "atomic_save", "build", "export_model",
           "learning_rate", "load_checkpoint", "load_weights", "make_trainer", "saved_config", "train"]

class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is kept."""


@dataclass
class TrainState:
    iteration: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    cpu_seconds: float = 0.0


class Trainer:
    """The training loop of both routes (:class:`EnergyRoute`, :class:`DataRoute`: what a batch is and
    its base loss; the distillation losses, the one-step KL, clipping, the EMA teacher, checkpoints
    and resume are the same for both). Under several processes (``group``,
    see molsample.distributed) each rank trains on ``train.batch / world`` rows of the global batch
    drawn from its own generator, gradients are averaged over the ranks before clipping, and rank 0
    alone evaluates, logs and writes checkpoints."""

    def __init__(self, exp: Experiment, out_dir: Path, progress: bool = True, group: Group = SINGLE):
        self.exp, self.out, self.group = exp, Path(out_dir), group
        self.progress = progress and group.main
        cfg = exp.config.train
        self.cfg = self._local(cfg)
        group.broadcast_module_(exp.model)
        self.ema = copy.deepcopy(exp.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(exp.model.parameters(), lr=cfg.lr.value, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(stream_seed(exp.config.seed, group.rank))
        self.state = TrainState()
        check_output_dir(self.out, "--out")
        self.route = DataRoute(exp, group) if exp.route == "data" else EnergyRoute()
        if cfg.init_checkpoint:                   # a later stage starts from an earlier run's EMA weights
            from .data import resolve_path
            path = resolve_path(cfg.init_checkpoint)
            state = read_checkpoint(path, exp.device)
            load_weights(exp.model, state["ema"], path)
            self.ema.load_state_dict(state["ema"])

    def _local(self, cfg):
        """This rank's training config: the global batch sizes divided by the world size."""
        g = self.group
        if not g.parallel:
            return cfg
        from dataclasses import replace
        return replace(cfg, batch=g.split(cfg.batch, "train.batch"),
                       distill=replace(cfg.distill, batch=g.split(cfg.distill.batch, "train.distill.batch")),
                       kl=replace(cfg.kl, batch=g.split(cfg.kl.batch, "train.kl.batch")))

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write the checkpoint (collective: every rank's generator state goes into rank 0's file)."""
        generators = self.group.gather(self.gen.get_state())
        if not self.group.main:
            return
        atomic_save({"config": self.exp.config.to_dict(), "model": self.exp.model.state_dict(),
                     "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
                     "generator": self.gen.get_state(), "generators": generators, "world_size": self.group.world,
                     "state": vars(self.state).copy()},
                    self.out / CHECKPOINT)

    def resume(self, iterations: int | None = None) -> bool:
        """Load OUT/checkpoint.pt if it exists (False if not). The run continues to ``iterations``
        if given (extended or cut short, never below what is done), else to the target the run was
        started with (the checkpoint's train.iterations)."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return False
        ckpt = read_checkpoint(path, self.exp.device)
        if "model" not in ckpt or "optimizer" not in ckpt:
            raise InputError(f"{path}: a sampling-only (exported) checkpoint cannot be resumed; train from its "
                             "config with train.init_checkpoint instead")
        saved_cfg = saved_config(ckpt, path)
        saved, current = saved_cfg.to_dict(), self.exp.config.to_dict()   # keys added since: defaults
        target = saved["train"]["iterations"] if iterations is None else iterations
        saved["train"]["iterations"] = current["train"]["iterations"]
        if saved != current:
            diff = config_difference(saved, current)
            raise InputError(f"{path}: the checkpoint was written with a different config ({diff}); use another "
                             "--out directory or the same config (only train.iterations may change on --resume)")
        done = int(ckpt["state"]["iteration"])
        if target < done:
            raise InputError(f"--iterations {target}: the run in {self.out} has already done {done} iterations; "
                             "give a larger number or leave --iterations out to continue to its own target")
        self._set_iterations(target)
        self.exp.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        restore_stream(self.gen, ckpt, path, self.group, "generators", "generator")
        self.state = TrainState(**ckpt["state"])
        return True

    # ------------------------------------------------------------------ one iteration
    def draw(self, n: int, gen: torch.Generator) -> dict:
        """The random part of an iteration's batch of n rows (the route's draws, then the big steps and
        the states the distillation losses start from)."""
        cfg, exp = self.cfg, self.exp
        batch = self.route.draw(self, n, gen)
        if (cfg.distill.weight > 0 or cfg.distill.volume_weight > 0) and self.state.iteration >= cfg.distill.start:
            m = self.route.distillation_rows(cfg, n)
            t, d, index = losses.sample_big_steps(m, cfg.n_base, gen)
            t, d = t.to(exp.dtype).to(exp.device), d.to(exp.dtype).to(exp.device)
            x = self.flow_states(t, d) if cfg.distill.states == "flow" else self.route.path_states(batch, t, index)
            batch.update(sd_t=t, sd_d=d, sd_x=x)
        return batch

    def batch_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(base loss, distillation terms, logs) of a drawn batch (means over its rows); the optimiser
        minimises their sum."""
        exp = self.exp
        base, logs = self.route.base_loss(self, batch)
        rest = torch.zeros((), dtype=exp.dtype, device=exp.device)
        if "sd_x" in batch:
            rest = rest + self.consistency_losses(batch["sd_x"], batch["sd_t"], batch["sd_d"], exp.model, logs)
        rest = rest + self.one_step_kl(logs)
        scale = self.route.scale
        logs["loss"] = (scale * (base + rest)).item()
        return scale * base, scale * rest, logs

    def losses(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(base loss, distillation terms, logs) of one iteration on this rank's share of the batch."""
        return self.batch_losses(self.draw(self.cfg.batch, self.gen))

    def consistency_losses(self, x, t, d, model, logs) -> torch.Tensor:
        """Self-consistency, volume consistency, Jacobian penalty and bijectivity hinge from states x
        at times t with big steps d (both routes)."""
        exp, cfg, gen = self.exp, self.cfg, self.gen
        student, teacher = exp.velocity(model), exp.velocity(self.ema)
        def target_metric(x_end, t_end):
            w = losses.marginal_precision(exp.target, exp.schedule, x_end, t_end,
                                          cfg.distill.metric_floor, cfg.distill.metric_cap)
            logs["sd_w"] = w.mean().item()
            return w

        metric = target_metric if cfg.distill.metric == "target" else None
        l_sd, x_mid = losses.self_consistency(student, teacher, x, t, d, metric)
        l_sd = l_sd / exp.schedule.s0**2          # state differences in units of the prior scale
        ramp = min(1.0, (self.state.iteration + 1 - cfg.distill.start) / max(cfg.distill.ramp, 1))
        total = cfg.distill.weight * ramp * l_sd
        logs["sd"] = l_sd.item()
        if cfg.distill.volume_weight > 0:
            l_vol = losses.volume_consistency(student, teacher, x, x_mid, t, d, exp.space, cfg.distill.volume_form,
                                              gen)
            total = total + cfg.distill.volume_weight * l_vol
            logs["vol"] = l_vol.item()
        if cfg.distill.jacobian_weight > 0:
            drift = model if exp.route == "energy" else student
            l_jac = losses.jacobian_penalty(drift, x, t, d, exp.space, gen)
            total = total + cfg.distill.jacobian_weight * l_jac
            logs["jac"] = l_jac.item()
        if cfg.hinge.weight > 0:
            n = t.shape[0]
            h = n // 2 if cfg.hinge.prior_scale != 1.0 else n    # rows from the plain prior
            keep = d >= cfg.hinge.min_step                       # only the coarse steps (all rows at 0)
            ra, rb = keep[:h].nonzero().squeeze(1), h + keep[h:].nonzero().squeeze(1)
            on_path = cfg.hinge.states == "path" or cfg.distill.states == "flow"
            xb = x[ra] if on_path else self.flow_states(t[ra], d[ra])
            if h < n:                                            # the other half from the prior's tail
                xb = torch.cat([xb, self.flow_states(t[rb], d[rb], cfg.hinge.prior_scale)])
            rows = torch.cat([ra, rb])
            tb, db = t[rows], d[rows]
            if len(db):
                if cfg.hinge.form == "lipschitz":
                    measure = jacobian.step_lipschitz(student, xb, tb, db, exp.space, gen, cfg.hinge.iterations)
                else:
                    measure = jacobian.step_monotonicity(student, xb, tb, db, exp.space, gen, cfg.hinge.iterations)
                total = total + self.bijectivity_hinge(measure, logs, "bij")
        return total

    @torch.no_grad()
    def flow_states(self, t: torch.Tensor, d: torch.Tensor, prior_scale: float = 1.0) -> torch.Tensor:
        """Per row, where the deterministic sampler with step d is at time t: a fresh prior draw
        (times ``prior_scale``) advanced by round(t / d) steps of size d with the EMA model (the
        model sampling uses)."""
        exp = self.exp
        x = prior_scale * exp.prior.sample(t.shape[0], self.gen, dtype=exp.dtype).to(exp.device)
        steps = torch.round(t / d).long()
        velocity = exp.velocity(self.ema)
        for size in torch.unique(d).tolist():             # rows of one step size: the sampler's own loop
            rows = (d == size).nonzero().squeeze(1)
            x[rows] = integrate(velocity, exp.prior, x[rows], round(1.0 / size), None, save=steps[rows]).saved
        return x

    def bijectivity_hinge(self, measure: torch.Tensor, logs: dict, key: str) -> torch.Tensor:
        """train.hinge.weight x the linear hinge on per-sample bijectivity measures: for ``lipschitz`` the
        ratio ||J_r||_2 / c must stay below train.hinge.bound, for ``monotone`` lambda_min(sym J) / c above it."""
        cfg = self.cfg
        if cfg.hinge.form == "lipschitz":
            l_bij = losses.bijectivity_penalty(measure, cfg.hinge.bound)
            logs[key + "_max"] = measure.max().item()
        else:
            l_bij = losses.bijectivity_penalty(-measure, -cfg.hinge.bound)
            logs[key + "_min"] = measure.min().item()
        logs[key] = l_bij.item()
        return cfg.hinge.weight * l_bij

    def one_step_kl(self, logs) -> torch.Tensor | float:
        """kl.weight x the reverse KL of the one-step map (exact log-determinant), from kl.start on;
        its batch's Kish ESS is logged."""
        exp, cfg = self.exp, self.cfg
        if cfg.kl.weight <= 0 or self.state.iteration < cfg.kl.start:
            return 0.0
        z0 = exp.prior.sample(cfg.kl.batch, self.gen, dtype=exp.dtype).to(exp.device)
        velocity = exp.velocity(exp.model)
        l_kl, lw, step = losses.one_step_reverse_kl(velocity, exp.prior, exp.target, z0, cfg.kl.energy_cap)
        logs["kl"] = l_kl.item()
        logs["kl_ess"] = float(ess_estimate(lw.double().cpu().numpy(), n_boot=0).value)
        total = cfg.kl.weight * l_kl
        if cfg.hinge.weight > 0:        # the KL sees log|det| only: the hinge keeps these steps from folding,
            c = 1 + velocity.linear_rate(torch.zeros(1, dtype=step.dtype, device=step.device))   # d = 1
            # exactly, from the Jacobian the KL already holds
            measure = residual_ratio(step, c) if cfg.hinge.form == "lipschitz" else monotonicity(step) / c
            total = total + self.bijectivity_hinge(measure, logs, "kl_bij")
        return total

    def clipped_sum_of_gradients(self, parts, names, logs) -> bool:
        """Set .grad to the sum of each part's gradient, clipped to norm grad_clip by
        clip_grad_norm_ (one part: the joint clip; base and distillation parts: clip_per_loss).
        Logs each part's norm before clipping under its name (None: not logged). False if any norm
        is not finite. Under several processes each part's gradient is averaged over the ranks
        before it is clipped, which is the gradient of the part's mean over the global batch."""
        params = [p for p in self.exp.model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        ok = True
        for part, name in zip(parts, names):
            if not part.requires_grad:
                continue
            for p in params:
                p.grad = None
            part.backward(retain_graph=True)
            self.group.average_gradients_(params)
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            if name:
                logs[name] = norm.item()
            ok = ok and bool(torch.isfinite(norm))
            for acc, p in zip(total, params):
                if p.grad is not None:
                    acc.add_(p.grad)
        for p, g in zip(params, total):
            p.grad = g
        return ok

    def step(self) -> dict:
        self.opt.zero_grad(set_to_none=True)
        try:
            base, rest, logs = self.losses()
        except NonFinitePositionsError as err:     # a path diverged to NaN / inf states: a non-finite loss
            base = rest = None
            logs = {"loss": math.nan, "nonfinite_states": str(err)}
        logs["loss"] = self.group.mean(logs["loss"])           # the same decision on every rank
        grads_ok = math.isfinite(logs["loss"])
        if grads_ok:
            if self.cfg.clip_per_loss:
                parts, names = (base, rest), ("grad_base", "grad_rest")
            else:
                parts, names = (base + rest,), (None,)
            grads_ok = self.clipped_sum_of_gradients(parts, names, logs)
        if not grads_ok:
            self.state.nonfinite_total += 1
            self.state.nonfinite_run += 1
            if self.state.nonfinite_run > self.cfg.max_nonfinite:
                raise TrainingDiverged(f"{self.state.nonfinite_run} consecutive non-finite losses at iteration "
                                       f"{self.state.iteration}; last good checkpoint: {self.out / CHECKPOINT}")
            logs["skipped"] = True
        else:
            self.state.nonfinite_run = 0
            lr = learning_rate(self.cfg, self.state.iteration)
            for group in self.opt.param_groups:
                group["lr"] = lr
            if self.cfg.lr.schedule != "constant":
                logs["lr"] = lr
            self.opt.step()
            with torch.no_grad():
                for pe, pm in zip(self.ema.parameters(), self.exp.model.parameters()):
                    pe.lerp_(pm, 1.0 - self.cfg.ema)
        self.state.iteration += 1
        return logs

    def evaluate(self, steps: int = 1) -> dict:
        exp = self.exp
        gen = torch.Generator().manual_seed(12345)
        try:
            s = sample(exp.velocity(self.ema), exp.prior, exp.target, self.cfg.eval_samples, steps,
                       self.cfg.eval_weights, gen, dtype=exp.dtype, device=exp.device)
        except NonFinitePositionsError:
            return {f"ess_{steps}": math.nan, f"log_z_{steps}": math.nan, f"eval_nonfinite_{steps}": True}
        lw = s.log_w.double().cpu().numpy()
        out = {f"ess_{steps}": ess_estimate(lw, n_boot=0).value, f"log_z_{steps}": log_z_estimate(lw, n_boot=0).value,
               f"bad_det_{steps}": s.n_nonpositive_det}
        return out

    def _set_iterations(self, iterations: int) -> None:
        """Train to ``iterations`` (the config, and so the checkpoint, records the new target)."""
        if iterations != self.cfg.iterations:
            from dataclasses import replace
            self.exp.config = replace(self.exp.config, train=replace(self.exp.config.train, iterations=iterations))
            self.cfg = self._local(self.exp.config.train)

    def run(self, resume: bool = False, iterations: int | None = None) -> TrainState:
        """Train to the target (``iterations`` if given, else the config's; on ``resume``, the
        checkpoint's own target unless ``iterations`` is given). Ctrl-C or SIGTERM stops after the
        current iteration, writes the checkpoint and raises :class:`Interrupted`."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.group.main:                  # rank 0 holds the lock and writes every file
            return self._run(resume, iterations)
        with RunLock(self.out / ".lock", f"--out {self.out}"):
            return self._run(resume, iterations)

    def _run(self, resume: bool, iterations: int | None) -> TrainState:
        if resume and self.resume(iterations):
            pass
        elif resume is False and (self.out / CHECKPOINT).is_file():
            raise FileExistsError(f"{self.out / CHECKPOINT} exists; pass --resume to continue or choose another --out")
        elif iterations is not None:
            self._set_iterations(iterations)
        if self.group.main:
            config_json = self.out / "config.json"
            config_json.with_name("config.json.tmp").write_text(json.dumps(self.exp.config.to_dict(), indent=2))
            os.replace(config_json.with_name("config.json.tmp"), config_json)
        from .runtime import progress_bar
        total = self.cfg.iterations
        bar = progress_bar(total=total, initial=self.state.iteration, enabled=self.progress)
        log = open(self.out / "log.jsonl" if self.group.main else os.devnull, "a")
        last = {}
        try:
            with stop_on_signal() as stop:
                while self.state.iteration < total:
                    if self.group.any_true(bool(stop)):     # every rank stops at the same iteration
                        self.save()
                        log.flush()
                        raise Interrupted(f"interrupted at iteration {self.state.iteration} of {total}; checkpoint "
                                          f"{self.out / CHECKPOINT} written; continue with --resume")
                    self._iteration(total, log, last, bar)
        finally:
            bar.close()
            log.close()
        return self.state

    def _iteration(self, total: int, log, last: dict, bar) -> None:
        """One training iteration with its evaluation, log line, checkpoint and progress update."""
        c0 = time.process_time()
        logs = self.step()
        it = self.state.iteration
        if (it % self.cfg.eval_every == 0 or it == total) and self.group.main:
            logs.update(self.evaluate(1))
            last.clear()
            last.update({k: v for k, v in logs.items() if k.startswith(("ess_", "log_z_"))})
        self.state.cpu_seconds += time.process_time() - c0
        log.write(json.dumps({"iteration": it, **logs}) + "\n")
        if it % self.cfg.checkpoint_every == 0 or it == total:
            self.save()
            log.flush()
        bar.set_postfix(loss=f"{logs['loss']:.3g}", **{k: f"{logs[k]:.3f}" for k in ("path_ess", "fm", "kl_ess")
                                                       if k in logs},
                        **{k: f"{v:.3g}" for k, v in last.items()}, skipped=self.state.nonfinite_total)
        bar.update(1)


def make_trainer(exp: Experiment, out_dir: str | Path, progress: bool = True, group: Group = SINGLE) -> Trainer:
    """The trainer of an experiment (its route chosen by the config)."""
    return Trainer(exp, Path(out_dir), progress, group)


def train(config: ExperimentConfig, out_dir: str | Path, device: str = "cpu", resume: bool = False,
          progress: bool = True, iterations: int | None = None, group: Group = SINGLE) -> TrainState:
    """Train ``config`` into ``out_dir`` (checkpoint.pt, config.json, log.jsonl). ``iterations``
    overrides train.iterations; on ``resume`` without it the run continues to its own target.
    ``group``: this process's rank in a multi-process run (molsample.distributed)."""
    return make_trainer(build(config, device), out_dir, progress, group).run(resume, iterations)
