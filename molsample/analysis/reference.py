"""Compact references for the repository (< 5 MB): dihedrals and energies of every frame, and a
subsample of frames, with provenance. `molsample compare` reads them like the full files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..io import reference_method, save_samples
from .compare import delta_f_from_fraction


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


REFERENCE_KINDS = ("umbrella", "replica-exchange")


def _run_se(e: dict) -> float:
    """The error of one run's estimate: the larger of MBAR's asymptotic error and, where the run has one,
    its block bootstrap (replica exchange), since MBAR's error assumes decorrelated samples."""
    se = [e.get("stderr"), e.get("stderr_bootstrap")]
    se = [float(v) for v in se if v is not None and math.isfinite(float(v))]
    return max(se) if se else math.nan


def _combine(values: list[dict]) -> dict:
    """Mean of independent runs' estimates {value, stderr}, each run an equal share (as in the packed
    weights), with stderr sqrt(sum se^2) / n; one estimate is returned as is. (An inverse-variance mean
    would pull populations towards the run that saw less of a state, whose error is the smaller.)"""
    v = np.array([float(e["value"]) for e in values])
    se = np.array([_run_se(e) for e in values])
    if len(values) == 1:
        return {"value": float(v[0]), "stderr": float(se[0])}
    return {"value": float(v.mean()), "stderr": float(np.sqrt((se ** 2).sum()) / len(values))}


def combine_estimates(runs: list[dict]) -> dict:
    """Estimates of independent runs of one reference method (different seeds) combined: dF(phi > 0 vs
    phi < 0), p(phi > 0) and the basin populations by the mean over runs, and each run's own
    figures under 'runs' (the independent halves a reference is checked with)."""
    residues = {r.get("residue") for r in runs}
    if len(residues) > 1:       # an umbrella run restrains one residue's angles; runs of different residues differ
        raise ValueError("the runs restrain different residues' angles ("
                         + ", ".join(sorted(str(r or "the first residue") for r in residues)) + "); pack each "
                         "residue's runs into its own reference")
    out = {key: _combine([r[key] for r in runs]) for key in ("dF_phi_positive_minus_negative_kT", "p_phi_positive")}
    if residues != {None}:
        out["residue"] = residues.pop()
    out["basins"] = {name: _combine([r["basins"][name] for r in runs]) for name in runs[0]["basins"]}
    out["runs"] = [{"dF_phi_positive_minus_negative_kT": {"value": r["dF_phi_positive_minus_negative_kT"]["value"],
                                                          "stderr": _run_se(r["dF_phi_positive_minus_negative_kT"])},
                    "basins": {n: {"value": b["value"], "stderr": _run_se(b)} for n, b in r["basins"].items()}}
                   for r in runs]
    if all("per_residue_phi_positive" in r for r in runs):      # peptides with several residues
        out["per_residue_phi_positive"] = {}
        for name in runs[0]["per_residue_phi_positive"]:
            per = [r["per_residue_phi_positive"][name]["p_phi_positive"] for r in runs]
            p = _combine(per)
            # dF as the log-odds of the runs' mean population (finite where one run barely saw the
            # state; the first residue's top-level dF is instead the mean of the runs' dF)
            out["per_residue_phi_positive"][name] = {
                "p_phi_positive": p, "dF_phi_positive_minus_negative_kT": delta_f_from_fraction(p["value"],
                                                                                               p["stderr"]),
                "runs": [{"value": float(e["value"]), "stderr": _run_se(e)} for e in per]}
    return out


def load_umbrella_run(file: Path, stride: int = 1) -> dict:
    """Every ``stride``-th sample of an umbrella run with its MBAR weight, its frames, and its JSON figures."""
    d = dict(np.load(file))
    side = json.loads(Path(file).with_suffix(".json").read_text())
    lw = d["log_w"][::stride]
    return {"phi": d["phi"][::stride], "psi": d["psi"][::stride], "log_w": lw - np.logaddexp.reduce(lw),
            "energy": d["energy_kj_per_mol"][::stride] / float(d["kT_kj_per_mol"]),
            "frames_xyz": d["frames_xyz"], "frames_log_w": d["frames_log_w"],
            "estimates": side["estimates"], "settings": side["settings"], "meta": side}


def load_replica_run(file: Path, stride: int = 1) -> dict:
    """Every sample of every temperature of a replica-exchange run with its MBAR weight at the system's
    temperature, log w(x) = -u_T(x) - log sum_k N_k exp(f_k - u_k(x)), from the run's own f_k."""
    from ..targets.openmm_target import kt_kj_per_mol
    d = dict(np.load(file))
    side = json.loads(Path(file).with_suffix(".json").read_text())
    est = side["estimates"]
    energy = d["energy_kj_per_mol"].astype(np.float64)                     # (iterations, K)
    kt = np.array([kt_kj_per_mol(t) for t in d["temperatures_K"]])
    kt_t = kt_kj_per_mol(est["temperature_K"])
    f_k = np.asarray(est["mbar"]["f_k"])
    e = energy[::stride].reshape(-1)
    log_denom = np.logaddexp.reduce(math.log(len(energy)) + f_k[None, :] - e[:, None] / kt[None, :], axis=1)
    lw = -e / kt_t - log_denom
    frames = d["frames_xyz"]
    return {"phi": d["phi"][::stride].reshape(-1), "psi": d["psi"][::stride].reshape(-1),
            "log_w": lw - np.logaddexp.reduce(lw), "energy": e / kt_t,
            "frames_xyz": frames, "frames_log_w": np.zeros(len(frames)),
            "estimates": est, "settings": side["settings"], "meta": side}


def load_packed_runs(file: Path, kind: str | None = None) -> list[dict]:
    """The independent runs inside a packed weighted reference, as the run loaders return them: each run's
    own figures (``estimates['runs']``); the pooled samples and frames, which a packed file no longer
    splits by run, go with the first run, whose ``share`` is the number of runs they pool (0 for the others).
    With ``kind`` ('umbrella' or 'replica-exchange'), a file of another kind is refused."""
    d = dict(np.load(file))
    if kind is not None and reference_method(d) != kind:
        raise ValueError(f"{file}: a packed {reference_method(d)!r} reference, not {kind!r}")
    est = json.loads(str(d["estimates"]))
    settings = json.loads(str(d["settings"]))
    per = est.get("runs") or [est]
    settings = settings if isinstance(settings, list) else [settings]
    meta = json.loads(str(d["meta"]))
    out = []
    for i, r in enumerate(per):
        dF = {"value": r["dF_phi_positive_minus_negative_kT"]["value"],
              "stderr": _run_se(r["dF_phi_positive_minus_negative_kT"])}
        p = 1.0 / (1.0 + math.exp(dF["value"]))                 # p(phi > 0) from the run's dF, delta-method error
        e = {"dF_phi_positive_minus_negative_kT": dF, "basins": r["basins"],
             "p_phi_positive": {"value": p, "stderr": dF["stderr"] * p * (1 - p)}}
        if est.get("residue"):
            e["residue"] = est["residue"]
        run = {"estimates": e, "settings": settings[i] if i < len(settings) else {}, "meta": meta, "share": 0,
               "phi": np.zeros(0), "psi": np.zeros(0), "log_w": np.zeros(0), "energy": np.zeros(0),
               "frames_xyz": np.zeros((0,) + d["frames_xyz"].shape[1:]), "frames_log_w": np.zeros(0)}
        if i == 0:
            lw = d["log_w"].astype(np.float64)
            run.update(share=len(per), phi=d["phi"].astype(np.float64), psi=d["psi"].astype(np.float64),
                       log_w=lw - np.logaddexp.reduce(lw), energy=d["energy"].astype(np.float64),
                       frames_xyz=d["frames_xyz"], frames_log_w=d["frames_log_w"].astype(np.float64))
        out.append(run)
    return out


def is_packed(file: Path) -> bool:
    """Whether ``file`` is a packed (compact) reference (molsample.io.samples_kind 'reference')."""
    from ..io import samples_kind
    with np.load(file) as d:
        return samples_kind(d) == "reference"


def pack_weighted(kind: str, files: list[str | Path], target, out: str | Path, n_frames: int = 3000,
                  provenance: str = "", stride: int = 1, frames_power: float = 1.0) -> Path:
    """Pack one or more independent runs (different seeds) of a weighted reference into one file.

    kind 'umbrella' (`molsample umbrella` .npz) or 'replica-exchange' (`molsample pt` .npz, every
    temperature reweighted to the system's by MBAR). Kept: phi, psi (float32), reduced energy at the
    system's temperature (float32) and log weight (float64) of every ``stride``-th sample, each run
    carrying an equal share of the weight; ``n_frames`` conformations drawn from all runs with
    probability proportional to w^frames_power, stored with log weights (1 - frames_power) log w so that
    the weighted frames are Boltzmann-distributed (frames_power 1: equal-weight frames; below 1 they
    cover rare states more often, which a proposal fitted to them needs); and ``estimates``: the runs'
    figures combined (their mean), with each run's own figures (``estimates['runs']``). A file that is
    itself a packed reference of the same kind adds its runs (a reference extended by new seeds)."""
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"unknown reference kind {kind!r}; use one of {REFERENCE_KINDS}")
    files = [Path(f) for f in files]
    runs = []
    for f in files:
        if is_packed(f):
            runs += load_packed_runs(f, kind)
        else:
            runs.append(load_umbrella_run(f, stride) if kind == "umbrella" else load_replica_run(f, stride))
    for r in runs:
        r.setdefault("share", 1)
    if kind == "umbrella" and target.topology is not None:   # a run without a residue restrained the first one
        from .timeseries import backbone_residues
        first = backbone_residues(target.topology)
        for r in runs:
            if first and not r["estimates"].get("residue"):
                r["estimates"]["residue"] = first[0][0]
    rng = np.random.default_rng(0)
    cum = np.cumsum([0] + [r["share"] for r in runs]) / len(runs)
    per_run = np.diff((cum * n_frames).round().astype(int))
    picks, pick_lw = [], []
    for r, n in zip(runs, per_run):
        if r["share"] == 0:
            continue
        lw = r["frames_log_w"] - np.logaddexp.reduce(r["frames_log_w"])
        w = np.exp(frames_power * (lw - lw.max()))
        i = rng.choice(len(w), size=int(n), replace=True, p=w / w.sum())
        picks.append(r["frames_xyz"][i])
        plw = (1.0 - frames_power) * lw[i]        # each run's frames carry its share of the total weight
        pick_lw.append(plw - np.logaddexp.reduce(plw) + math.log(r["share"] / len(runs)))
    estimates = combine_estimates([r["estimates"] for r in runs])
    if len(runs) == 1:            # one run keeps all its figures (profile, overlap, ...), with the error used above
        estimates = {**runs[0]["estimates"], **{k: v for k, v in estimates.items() if k != "runs"}}
    arrays = {"kind": kind, "phi": np.concatenate([r["phi"] for r in runs]).astype(np.float32),
              "psi": np.concatenate([r["psi"] for r in runs]).astype(np.float32),
              "log_w": np.concatenate([r["log_w"] + math.log(r["share"] / len(runs)) for r in runs if r["share"]]),
              "energy": np.concatenate([r["energy"] for r in runs]).astype(np.float32),
              "frames_xyz": np.concatenate(picks).astype(np.float32), "frames_log_w": np.concatenate(pick_lw),
              "frames_power": frames_power,
              "estimates": json.dumps(estimates), "settings": json.dumps([r["settings"] for r in runs]),
              "stride": stride}
    return _save(out, arrays, target, [str(f) for f in files], provenance)


def pack_umbrella(file: str | Path, target, out: str | Path, n_frames: int = 3000, provenance: str = "",
                  stride: int = 1) -> Path:
    """One umbrella run packed (see :func:`pack_weighted`)."""
    return pack_weighted("umbrella", [file], target, out, n_frames, provenance, stride)


def _save(out, arrays, target, sources, provenance) -> Path:
    import openmm
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"system": target.name, "sources": sources, "provenance": provenance, "openmm_version": openmm.__version__}
    arrays = dict(arrays)
    method = arrays.pop("kind")
    return save_samples(out, "reference", meta, compressed=True, compact_reference=True, system=target.name,
                        method=method, **arrays)
