"""Compact references for the repository (< 5 MB): dihedrals and energies of every frame, and a
subsample of frames, with provenance. `molsample compare` reads them like the full files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def pack_md(files: list[str | Path], target, out: str | Path, n_frames: int = 4000, provenance: str = "") -> Path:
    """Pack MD replica trajectories: phi, psi, reduced energy of every frame (float32), replica
    lengths, and ``n_frames`` evenly spaced frames (float32 nm)."""
    from .ensembles import load_ensemble
    ens = load_ensemble(files, target)
    idx = np.linspace(0, len(ens.energy) - 1, min(n_frames, len(ens.energy))).round().astype(int)
    arrays = {"kind": "md", "energy": ens.energy.astype(np.float32), "segments": np.asarray(ens.segments),
              "frames_xyz": ens.x[idx].astype(np.float32), "frames_row": idx}
    if ens.phi is not None:
        arrays.update(phi=ens.phi.astype(np.float32), psi=ens.psi.astype(np.float32))
    return _save(out, arrays, target, [str(f) for f in files], provenance)


def pack_umbrella(file: str | Path, target, out: str | Path, n_frames: int = 3000, provenance: str = "",
                  stride: int = 1) -> Path:
    """Pack an umbrella reference: phi, psi (float32) and log weights (float64, renormalised) of every
    ``stride``-th sample, the MBAR estimates of the full run, and ``n_frames`` frames drawn by weight
    (equal-weight frames)."""
    file = Path(file)
    d = dict(np.load(file))
    for key in ("phi", "psi", "energy_kj_per_mol"):
        d[key] = d[key][::stride]
    lw = d["log_w"][::stride]
    d["log_w"] = lw - np.logaddexp.reduce(lw)
    rng = np.random.default_rng(0)
    w = np.exp(d["frames_log_w"] - d["frames_log_w"].max())
    pick = rng.choice(len(w), size=min(n_frames, len(w)), replace=True, p=w / w.sum())
    estimates = json.loads(file.with_suffix(".json").read_text())
    arrays = {"kind": "umbrella", "phi": d["phi"].astype(np.float32), "psi": d["psi"].astype(np.float32),
              "log_w": d["log_w"], "energy": (d["energy_kj_per_mol"] / float(d["kT_kj_per_mol"])).astype(np.float32),
              "frames_xyz": d["frames_xyz"][pick].astype(np.float32), "frames_log_w": np.zeros(len(pick)),
              "estimates": json.dumps(estimates["estimates"]), "umbrella_settings": json.dumps(estimates["settings"]),
              "stride": stride}
    return _save(out, arrays, target, [str(file)], provenance)


def _save(out, arrays, target, sources, provenance) -> Path:
    import openmm
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"system": target.name, "sources": sources, "provenance": provenance, "openmm_version": openmm.__version__}
    np.savez_compressed(out, compact_reference=True, system=target.name, meta=json.dumps(meta), **arrays)
    return out
