"""Training of the internal-coordinate model: one iteration (:func:`train_step`: the energy objective,
self-consistency, flow matching to the data frames' latents), evaluation on fresh draws, and the resumable run
(:func:`train_internal`: atomic checkpoints, several processes, Ctrl-C)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import typing
from pathlib import Path

import numpy as np
import torch

from ..io import INTERNAL_FORMAT as FORMAT
from ..schema import from_dict
from .config import ICDataConfig, ICExperimentConfig, ICTrainConfig
from .model import CHECKPOINT, InternalSampler, base_state, build_sampler, load_internal_checkpoint, training_frames

__all__ = ["LatentFrames", "evaluate", "train_internal", "train_step"]


@dataclasses.dataclass
class LatentFrames:
    """The data frames in the base's latent space, z (F, k + m), with their probabilities p (F,): the flow-matching
    targets."""
    z: torch.Tensor
    p: torch.Tensor

    @classmethod
    def of(cls, sampler: "InternalSampler", dc: ICDataConfig, chunk: int = 8192) -> "LatentFrames":
        x, log_w = training_frames(dc, sampler.cartesian)
        zs = []
        for start in range(0, len(x), chunk):
            y = sampler.base.ic.forward(torch.as_tensor(x[start:start + chunk], dtype=torch.float64))
            zs.append(sampler.base.to_latent(y))
        z = torch.cat(zs)
        lw = torch.as_tensor(log_w, dtype=torch.float64)
        ok = torch.isfinite(z).all(1) & torch.isfinite(lw)
        p = torch.softmax(torch.where(ok, lw, torch.full_like(lw, -math.inf)), 0)
        return cls(z[ok], p[ok])

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.z[torch.multinomial(self.p, n, replacement=True, generator=generator)]


def evaluate(sampler: InternalSampler, n: int, seed: int = 12345, steps: typing.Sequence[int] = (1,)) -> dict:
    """Kish ESS of n fresh draws (a fixed seed, never a training batch), det <= 0 and out-of-domain counts,
    of the one-step map and (``eval_ess_K``) of each other K in ``steps``."""
    from ..estimate import ess
    out = {}
    for k in sorted(set(steps) | {1}):
        d = sampler.draw(n, torch.Generator().manual_seed(seed), steps=k)
        lw = d["log_w"].numpy()
        res = {"eval_ess": ess(lw, n_boot=0).value, "eval_det_nonpositive": int((d["sign"] <= 0).sum()),
               "eval_out_of_domain": int(d["out_of_domain"]), "eval_zero_weight": int((~np.isfinite(lw)).sum())}
        out.update(res if k == 1 else {f"{key}_K{k}": v for key, v in res.items()})
    return out


def train_step(sampler: InternalSampler, opt: torch.optim.Optimizer, tc: ICTrainConfig, batch: int,
               gen: torch.Generator, group=None, frames: LatentFrames | None = None) -> dict:
    """One iteration on ``batch`` draws of this rank: the loss (``tc.energy_weight`` x the energy objective,
    + ``tc.self_consistency`` x self-consistency, + ``tc.flow_matching`` x flow matching to ``frames``,
    + ``tc.max_likelihood`` x the one-step map's negative log-likelihood of ``frames``), its
    gradient averaged over the ranks (``group``; the gradient of the global batch's mean), clipped to
    ``tc.grad_clip``, one optimiser step. A loss that is not finite on some rank is skipped on every rank
    (``skipped`` in the logs)."""
    from ..distributed import SINGLE
    group = group or SINGLE
    opt.zero_grad()
    # one K per iteration, the same on every rank (rank 0's draw); a single K draws nothing (the
    # generator's stream stays that of a single-step run)
    k = tc.steps[0] if len(tc.steps) == 1 else \
        group.broadcast(tc.steps[int(torch.randint(len(tc.steps), (1,), generator=gen))])
    if tc.energy_weight > 0:
        loss, logs = sampler.one_step.objective(tc.loss, batch, gen, tc.energy_cap, tc.ess_weight, steps=k)
        loss = tc.energy_weight * loss
    else:
        loss, logs = torch.zeros((), dtype=torch.float64), {"batch_ess": math.nan}
    logs["steps"] = k
    if tc.self_consistency > 0:
        sc, sc_logs = sampler.one_step.self_consistency(batch, gen, tc.steps)
        loss = loss + tc.self_consistency * sc
        logs.update(sc_logs)
    if tc.flow_matching > 0:
        if frames is None:
            raise ValueError("train.flow_matching > 0 needs the data frames (LatentFrames)")
        fm, fm_logs = sampler.one_step.flow_matching(frames.draw(batch, gen), gen)
        loss = loss + tc.flow_matching * fm
        logs.update(fm_logs)
    if tc.max_likelihood > 0:
        if frames is None:
            raise ValueError("train.max_likelihood > 0 needs the data frames (LatentFrames)")
        ml, ml_logs = sampler.one_step.max_likelihood(frames.draw(batch, gen))
        loss = loss + tc.max_likelihood * ml
        logs.update(ml_logs)
    if tc.energy_weight == 0:
        logs["loss"] = float(loss.detach())
    if math.isfinite(group.mean(float(loss.detach()))):
        params = list(sampler.flow.parameters())
        loss.backward()
        group.average_gradients_(params)
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
    else:
        logs["skipped"] = True
    return logs


def _resume_run(cfg: ICExperimentConfig, path: Path, iterations: int | None, group, gen: torch.Generator):
    """The sampler, state, checkpoint and target of a run continued from ``path`` (this rank's stream restored
    into ``gen``); refused if the config (other than train.*) or the number of processes changed."""
    from ..distributed import restore_stream
    from ..io import read_checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume; start without --resume")
    ckpt = read_checkpoint(path)
    saved = from_dict(ICExperimentConfig, ckpt["config"], f"{path}: config")
    if dataclasses.replace(saved, train=cfg.train) != cfg:
        raise ValueError(f"{path}: the checkpoint was trained with another config (only train.* may change "
                         "on --resume)")
    target_its = iterations if iterations is not None else ckpt["state"]["target_iterations"]
    sampler, _ = load_internal_checkpoint(path, ckpt)
    st = ckpt["state"]
    if target_its < st["iteration"]:
        raise ValueError(f"--iterations {target_its}: the run has already done {st['iteration']}")
    restore_stream(gen, ckpt, path, group, "rngs", "rng")
    return sampler, st, ckpt, target_its


def _start_run(cfg: ICExperimentConfig, path: Path, iterations: int | None, group, progress: bool):
    """The sampler (base fitted once, on rank 0, and sent to the others; the map at the identity), a fresh
    state and the target of a new run."""
    if path.is_file():
        raise FileExistsError(f"{path} exists; pass --resume to continue or choose another --out")
    target_its = cfg.train.iterations if iterations is None else iterations
    c0 = time.process_time()
    fitted = None
    if group.main:
        sampler = build_sampler(cfg, generator=torch.Generator().manual_seed(cfg.seed + 1), progress=progress)
        fitted = (base_state(sampler.base), sampler.refine_log)
    fitted = group.broadcast(fitted)
    if not group.main:
        sampler = build_sampler(cfg, generator=torch.Generator().manual_seed(cfg.seed + 1), base_state_dict=fitted[0])
        sampler.refine_log = fitted[1]
    group.broadcast_module_(sampler.flow)
    st = {"iteration": 0, "cpu_seconds": 0.0, "base_fit_cpu_seconds": group.broadcast(time.process_time() - c0),
          "base_refine": sampler.refine_log, "nonfinite_total": 0, "last_eval": {}}
    return sampler, st, target_its


def _save_checkpoint(path: Path, cfg: ICExperimentConfig, sampler, opt, st: dict, gen, group) -> None:
    """Write the run's checkpoint atomically (rank 0; every rank's generator state gathered into it)."""
    from ..checkpoint import atomic_save
    rngs = group.gather(gen.get_state())
    if not group.main:
        return
    st["target_iterations"] = cfg.train.iterations
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "system": cfg.target, "model": sampler.state(),
                 "optimizer": opt.state_dict(), "state": dict(st), "rng": gen.get_state(), "rngs": rngs,
                 "world_size": group.world, "torch_version": str(torch.__version__)}, path)


def _write_config(path: Path, cfg: ICExperimentConfig) -> None:
    """The resolved configuration as JSON, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    os.replace(tmp, path)


def train_internal(cfg: ICExperimentConfig, out_dir, resume: bool = False, progress: bool = True,
                   iterations: int | None = None, group=None) -> dict:
    """Fit the base and train the one-step map of ``cfg`` into ``out_dir`` (checkpoint.pt, config.json,
    log.jsonl). Resumable (``resume``: continue to the checkpoint's own target unless ``iterations`` is
    given); Ctrl-C / SIGTERM finish the iteration, write the checkpoint and raise Interrupted.
    Returns the training state (iteration, cpu_seconds, base fit time, last evaluation).

    ``group`` (molsample.distributed): under several processes rank 0 fits the base and sends it to
    the others, each rank draws ``train.batch / world`` of every batch from its own generator, the
    map's gradient is averaged over the ranks before clipping, and rank 0 alone evaluates, logs and
    writes the checkpoint (with every rank's generator state)."""
    import contextlib

    from ..distributed import SINGLE, stream_seed
    from ..runtime import Interrupted, RunLock, progress_bar, stop_on_signal
    group = group or SINGLE
    progress = progress and group.main
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT
    lock = RunLock(out / ".lock", f"--out {out}") if group.main else contextlib.nullcontext()
    with lock:
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, group.rank))
        batch = group.split(cfg.train.batch, "train.batch")
        if resume:
            sampler, st, ckpt, target_its = _resume_run(cfg, path, iterations, group, gen)
        else:
            sampler, st, target_its = _start_run(cfg, path, iterations, group, progress)
            ckpt = None
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iterations=target_its))
        tc = cfg.train
        frames = LatentFrames.of(sampler, cfg.data) if tc.flow_matching > 0 or tc.max_likelihood > 0 else None
        opt = torch.optim.Adam(sampler.flow.parameters(), lr=tc.lr)
        if ckpt is not None and "optimizer" in ckpt:
            opt.load_state_dict(ckpt["optimizer"])

        def save():
            _save_checkpoint(path, cfg, sampler, opt, st, gen, group)

        if group.main:
            _write_config(out / "config.json", cfg)
        if st["iteration"] == 0 and not st["last_eval"]:
            if group.main:
                st["base_eval"] = evaluate(sampler, tc.eval_samples, steps=tc.steps)
                st["last_eval"] = dict(st["base_eval"])
            save()
        bar = progress_bar(total=target_its, initial=st["iteration"], enabled=progress,
                           desc=f"train {cfg.target} (internal)")
        log = open(out / "log.jsonl" if group.main else os.devnull, "a")
        try:
            with stop_on_signal() as stop:
                while st["iteration"] < target_its:
                    if group.any_true(bool(stop)):      # every rank stops at the same iteration
                        save()
                        raise Interrupted(f"interrupted at iteration {st['iteration']} of {target_its}; checkpoint "
                                          f"{path} written; continue with --resume")
                    c0 = time.process_time()
                    logs = train_step(sampler, opt, tc, batch, gen, group, frames)
                    if logs.get("skipped"):
                        st["nonfinite_total"] += 1
                    st["iteration"] += 1
                    it = st["iteration"]
                    if (it % tc.eval_every == 0 or it == target_its) and group.main:
                        st["last_eval"] = evaluate(sampler, tc.eval_samples, steps=tc.steps)
                        logs.update(st["last_eval"])
                    st["cpu_seconds"] += time.process_time() - c0
                    log.write(json.dumps({"iteration": it, **logs}) + "\n")
                    if it % tc.checkpoint_every == 0 or it == target_its:
                        save()
                        log.flush()
                    bar.set_postfix(loss=f"{logs['loss']:.3g}", batch_ess=f"{logs['batch_ess']:.2f}",
                                    ess=f"{st['last_eval'].get('eval_ess', math.nan):.3f}")
                    bar.update(1)
        finally:
            bar.close()
            log.close()
        save()
        return st
