"""Reference frames for the data-assisted route: loading, weighting, augmentation.

A data file holds frames of the target (nm for molecules, reduced units for LJ) and optionally
per-frame log Boltzmann weights (umbrella sampling). Frames are drawn with probability
proportional to w^p: p = 1 gives the reference distribution, p < 1 a flatter proposal that
covers rare states (the exact importance weights of the sampler correct for it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .flow import Space
from .io import InputError, TopologyMismatchError, open_npz, read_positions, samples_kind


def resolve_path(path: str | Path) -> Path:
    """A data path as given, else relative to the repository (the parent of the package)."""
    p = Path(path)
    if p.is_file():
        return p
    alt = Path(__file__).resolve().parent.parent / p
    if alt.is_file():
        return alt
    raise FileNotFoundError(f"data file {path!r} not found (looked in the working directory and in {alt.parent}); "
                            "produce it with `molsample md` or `molsample umbrella` as the config's description says")


def load_frames(path: str | Path, target) -> tuple[np.ndarray, np.ndarray]:
    """Frames (M, *event_shape) float64 and their log weights (M,) (zeros when the file has none).

    Reads ``frames_xyz`` (+ ``frames_log_w``) from umbrella outputs and compact references, ``x`` (+
    ``log_w``) from sampler outputs, ``xyz`` from MCMC or position files, or any trajectory mdtraj reads.
    """
    path = resolve_path(path)
    if path.suffix == ".npz":
        z = open_npz(path)
        try:
            kind = samples_kind(z)
        except InputError:
            raise InputError(f"{path}: expected 'frames_xyz', 'x' or 'xyz' in the .npz, found {sorted(z)}") from None
        if "frames_xyz" in z:                                   # references: weighted frames
            x = np.asarray(z["frames_xyz"], dtype=np.float64)
            lw = np.asarray(z["frames_log_w"], dtype=np.float64) if "frames_log_w" in z else np.zeros(len(x))
        elif kind in ("samples", "mcmc", "positions"):        # a sampler's draws with their weights, or positions
            x = np.asarray(z["x"] if "x" in z else z["xyz"], dtype=np.float64)
            lw = np.asarray(z["log_w"], dtype=np.float64) if "log_w" in z and len(z["log_w"]) == len(x) \
                else np.zeros(len(x))
        else:
            raise InputError(f"{path}: a {kind!r} file holds no frames, expected 'frames_xyz', 'x' or 'xyz'")
        if len(x) == 0:
            raise InputError(f"{path}: holds no frames; the data route needs reference frames")
    else:
        x = read_positions(path, target.event_shape, target.topology)
        lw = np.zeros(len(x))
    if x.shape[1:] != tuple(target.event_shape):
        raise TopologyMismatchError(f"{path}: frames have shape {x.shape[1:]}, the system {target.name!r} "
                                    f"needs {tuple(target.event_shape)}")
    bad = ~np.isfinite(x).reshape(len(x), -1).all(1) | ~np.isfinite(lw)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} frames with non-finite positions or weights "
                         f"(first: {int(np.flatnonzero(bad)[0])})")
    return x, lw


class FrameSampler:
    """Draw centred (and optionally mirrored) frames with probability proportional to w^power.

    Parameters
    ----------
    x : array (M, N, s); log_w : array (M,); space : Space (zero-centroid for particles)
    """

    def __init__(self, x: np.ndarray, log_w: np.ndarray, space: Space, power: float = 1.0, mirror: bool = False,
                 dtype=torch.float32, device="cpu"):
        self.x = space.project(torch.as_tensor(x, dtype=torch.float64)).to(dtype=dtype, device=device)
        lp = power * np.asarray(log_w, dtype=np.float64)
        p = np.exp(lp - lp.max())
        self.prob = torch.as_tensor(p / p.sum())
        self.mirror, self.space = bool(mirror), space
        self.n_eff = float(1.0 / (self.prob**2).sum())

    def sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        idx = torch.multinomial(self.prob, n, replacement=True, generator=generator)
        x = self.x[idx.to(self.x.device)]
        if self.mirror:                                   # reflect x -> -x in the first coordinate
            flip = torch.rand(n, generator=generator) < 0.5
            x[flip.to(x.device), ..., 0] *= -1                # x is a fresh copy (advanced indexing)
        return x
