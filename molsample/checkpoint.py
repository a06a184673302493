"""Checkpoints of the Cartesian route: atomic writes, loading with weights_only, rebuilding an experiment from
the config inside, sampling-only exports."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .build import Experiment, build
from .config import ExperimentConfig
from .io import InputError, read_checkpoint

CHECKPOINT = "checkpoint.pt"


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def saved_config(ckpt: dict, path) -> ExperimentConfig:
    """The config stored in a checkpoint, checked, with defaults for keys added after it was written."""
    return ExperimentConfig.from_saved(ckpt["config"], f"{path}: config")


def load_checkpoint(path: str | Path, device="cpu") -> tuple[Experiment, dict]:
    """Rebuild an experiment from a checkpoint alone (config inside), EMA weights loaded into ``model``."""
    ckpt = read_checkpoint(path, device)
    cfg = saved_config(ckpt, path)
    exp = build(cfg, device)
    load_weights(exp.model, ckpt["ema"], path)
    return exp, ckpt


def load_weights(model: torch.nn.Module, state: dict, path) -> None:
    """``model.load_state_dict(state)`` with an error naming the checkpoint when they do not fit."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: its weights do not fit the model its config builds ({first[:200]})") from None


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a sampling-only copy of a checkpoint (config, EMA weights, training state; no
    optimiser or student weights), atomically. ``load_checkpoint`` reads it like the original."""
    ckpt = read_checkpoint(checkpoint, "cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"config": ckpt["config"], "ema": ckpt["ema"], "state": ckpt["state"],
                 "exported_from": str(checkpoint)}, out)
    return out


def config_difference(saved: dict, current: dict, prefix: str = "") -> str:
    """The first keys where two config dicts differ, as 'key: saved -> current'."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_difference(a, b, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return "; ".join(out[:3])
