"""Sets of conformations with (optional) weights, read from sampler, MD and umbrella files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import InputError, open_npz, read_positions, reference_method, samples_kind


@dataclass
class Ensemble:
    """Conformations to compare. ``log_w`` None means equal weights; ``segments`` are the lengths
    of independent, time-correlated runs (MD replicas), empty for independent samples."""
    label: str
    kind: str                                  # "sampler", "md", "umbrella", "replica-exchange", "samples"
    x: np.ndarray | None                       # (M, N, 3) or (M, *event_shape)
    energy: np.ndarray                         # reduced, (M,)
    log_w: np.ndarray | None = None
    phi: np.ndarray | None = None              # radians, (M,) (may index a larger set than x for umbrella)
    psi: np.ndarray | None = None
    angle_log_w: np.ndarray | None = None      # weights of (phi, psi) when they are a different set than x
    segments: list[int] = field(default_factory=list)
    folded_fraction: float | None = None
    external: dict = field(default_factory=dict)   # estimates computed upstream (umbrella / MBAR)

    @property
    def correlated(self) -> bool:
        return bool(self.segments)

    @classmethod
    def from_samples(cls, x, log_w, target, label: str = "sampler") -> "Ensemble":
        """An ensemble of a sampler's draws held in memory (x (M, *event_shape), log_w (M,) or None; numpy
        or torch), prepared like a samples file (energies, D-to-L folding, dihedrals) without a trip to disk."""
        x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
        if log_w is not None:
            log_w = np.asarray(log_w.detach().cpu().numpy() if hasattr(log_w, "detach") else log_w, dtype=np.float64)
        if x.shape[1:] != tuple(target.event_shape):
            raise ValueError(f"positions of shape {x.shape[1:]}, but {target.name} has {tuple(target.event_shape)}")
        return _finish(cls(label, "sampler" if log_w is not None else "samples", x, reduced_energies(target, x),
                           log_w=log_w), target, target.topology)


def chirality_signs(x: np.ndarray, topology) -> np.ndarray:
    """Sign of the signed volume (N - CA) x (C - CA) . (CB - CA) at each CA with a CB, (M, n_centres)."""
    cols = []
    for res in topology.residues:
        idx = {a.name: a.index for a in res.atoms}
        if all(k in idx for k in ("N", "CA", "C", "CB")):
            n, ca, c, cb = (x[:, idx[k]] for k in ("N", "CA", "C", "CB"))
            cols.append(np.sign(np.einsum("mi,mi->m", np.cross(n - ca, c - ca), cb - ca)))
    return np.stack(cols, axis=1) if cols else np.ones((len(x), 0))


def fold_to_l(x: np.ndarray, topology, log_w: np.ndarray | None):
    """Map D conformations onto L by reflection (valid for mirror-symmetric force fields: each
    sample keeps its own log w). Samples with mixed chirality over several centres cannot be
    repaired and get zero weight. Returns (x, log_w, fraction folded, fraction removed)."""
    signs = chirality_signs(x, topology)
    if signs.shape[1] == 0:
        return x, log_w, 0.0, 0.0
    l_sign = 1.0                                     # L-amino acids: positive signed volume (N, C, CB)
    all_d = np.all(signs == -l_sign, axis=1)
    mixed = ~np.all(signs == l_sign, axis=1) & ~all_d
    x = x.copy()
    x[all_d] = -x[all_d]
    if mixed.any():
        log_w = np.zeros(len(x)) if log_w is None else log_w.copy()
        log_w[mixed] = -np.inf
    return x, log_w, float(all_d.mean()), float(mixed.mean())


def _dihedrals(x, topology):
    import mdtraj

    from .timeseries import backbone_dihedrals
    d = backbone_dihedrals(mdtraj.Trajectory(x.astype(np.float32), topology))
    return (d["phi"], d["psi"]) if d else (None, None)


def load_ensemble(paths: list[str | Path], target, label: str | None = None) -> Ensemble:
    """Read a samples file (`molsample sample` .npz), an umbrella reference (.npz) or MD
    trajectories (one or more replica files) for ``target``."""
    paths = [Path(p) for p in paths]
    topology = target.topology
    label = label or paths[0].stem
    first = paths[0]
    if first.suffix == ".npz":
        data = open_npz(first)
        keys = set(data)
        for key in ("x", "xyz", "frames_xyz"):
            if key in data and (data[key].ndim < 2 or len(data[key]) == 0):
                raise InputError(f"{first}: '{key}' holds no conformations (shape {data[key].shape}); at least "
                                 "one is needed")
        kind = samples_kind(data) if keys & {"x", "xyz", "frames_xyz", "kind"} else None
        if kind == "reference":
            return _compact(first, data, target, label)
        if kind in ("umbrella", "replica-exchange") and "frames_xyz" in keys and "phi" in keys:
            return _umbrella(first, data, target, label)
        if kind in ("samples", "mcmc", "positions"):
            x = data.get("x", data.get("xyz"))
            try:
                return Ensemble.from_samples(x, data.get("log_w"), target, label)
            except ValueError as exc:
                raise ValueError(f"{first}: {exc}") from None
        raise ValueError(f"{first}: expected 'x' (molsample sample), 'xyz' or an umbrella reference")
    xs, segments = [], []
    for p in paths:
        x = read_positions(p, target.event_shape, topology)
        xs.append(x)
        segments.append(len(x))
    x = np.concatenate(xs)
    return _finish(Ensemble(label, "md", x, reduced_energies(target, x), segments=segments), target, topology)


def reduced_energies(target, x) -> np.ndarray:
    """Reduced energies (M,) of positions x (M, *event_shape), float64, in chunks of 8192."""
    import torch
    with torch.no_grad():
        return np.concatenate([target.energy(torch.as_tensor(c, dtype=torch.float64)).numpy()
                               for c in np.array_split(x, max(1, len(x) // 8192))])


def _finish(ens: Ensemble, target, topology) -> Ensemble:
    if topology is not None and topology.n_residues > 1:
        if target.mirror_symmetric:
            ens.x, ens.log_w, ens.folded_fraction, removed = fold_to_l(ens.x, topology, ens.log_w)
            ens.external["removed_mixed_chirality"] = removed
        ens.phi, ens.psi = _dihedrals(ens.x, topology)
    return ens


def _umbrella(path: Path, d: dict, target, label: str) -> Ensemble:
    side = path.with_suffix(".json")
    external = json.loads(side.read_text())["estimates"] if side.is_file() else {}
    x = d["frames_xyz"].astype(np.float64)
    if x.shape[1:] != tuple(target.event_shape):
        raise ValueError(f"{path}: frames of shape {x.shape[1:]}, but {target.name} has {tuple(target.event_shape)}")
    return Ensemble(label, "umbrella", x, reduced_energies(target, x), log_w=d["frames_log_w"], phi=d["phi"].astype(float),
                    psi=d["psi"].astype(float), angle_log_w=d["log_w"], external=external)


def _compact(path: Path, d: dict, target, label: str) -> Ensemble:
    """A compact reference (analysis.reference): angles and energies of every frame, some frames."""
    if str(d["system"]) != target.name:
        raise ValueError(f"{path}: a reference for {d['system']}, not {target.name}")
    x = d["frames_xyz"].astype(np.float64)
    phi = d["phi"].astype(float) if "phi" in d else None
    psi = d["psi"].astype(float) if "psi" in d else None
    if reference_method(d) == "md":
        return Ensemble(label, "md", x, d["energy"].astype(float), phi=phi, psi=psi,
                        segments=[int(s) for s in d["segments"]])
    return Ensemble(label, reference_method(d), x, d["energy"].astype(float), log_w=d["log_w"], phi=phi, psi=psi,
                    angle_log_w=d["log_w"], external=json.loads(str(d["estimates"])))
