"""The ``molsample`` command line.

Bad input ends with exit code 2 and one line on stderr that names the flag, key or file, the
value and what is expected; inputs are checked before long work starts, so nothing is left
half-written. Ctrl-C during ``md`` or ``train`` saves what the run has and says how to continue.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .io import read_meta, save_samples


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    """An integer, also written as 1e8 or 100_000."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _number(kind, test, words):
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a number' if kind is float else 'an integer'}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text} is not {words}")
        return value
    parse.__name__ = words
    return parse


positive_int = _number(_integer, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(_integer, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")


def _cmd_systems(args) -> int:
    from .targets.registry import load_target, spec_dict, system_files

    rows = []
    for name, path in system_files().items():
        target = load_target(path)
        spec = spec_dict(path)
        rows.append({**target.describe(), "kind": spec["kind"], "file": str(path),
                     "forcefield": list(spec.get("forcefield", ())) or None,
                     "description": spec.get("description", ""),
                     "reference": str(path.parent / spec["reference"]) if spec.get("reference") else None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'name':<12} {'kind':<14} {'atoms':>5} {'dim':>4} {'dof':>4} {'T (K)':>6}  force field / notes"
    print(head)
    print("-" * len(head))
    for r in rows:
        atoms = r["n_particles"] if r["n_particles"] is not None else "-"
        temp = f"{r['temperature']:.0f}" if r["temperature"] else "-"
        notes = " + ".join(r["forcefield"]) if r["forcefield"] else r["description"]
        print(f"{r['name']:<12} {r['kind']:<14} {atoms!s:>5} {r['dim']:>4} {r['dof']:>4} {temp:>6}  {notes}")
    refs = [r for r in rows if r["reference"]]
    if refs:
        print("\nsettled references (the default of `molsample compare`):")
        for r in refs:
            print(f"  {r['name']:<12} {r['reference']}")
    return 0


def _cmd_energy(args) -> int:
    import torch

    from .io import read_positions
    from .targets import OpenMMEvaluator, load_target

    target = load_target(args.system)
    if args.backend == "openmm":
        from .runtime import check_platform
        check_platform(args.platform)
    xyz = read_positions(args.file, target.event_shape, target.topology)
    kt = target.kt
    if args.backend == "torch":
        x = torch.as_tensor(xyz, dtype=getattr(torch, args.dtype))
        with torch.no_grad():
            u = torch.cat([target.energy(c) for c in torch.split(x, 4096)]).double().numpy()
    else:
        if not target.has_openmm:
            raise ValueError(f"--backend openmm: system {target.name!r} has no OpenMM form; use --backend torch")
        system, kt_system = target.openmm_system()
        if not np.all(np.isfinite(xyz)):
            raise ValueError(f"{args.file}: contains NaN or inf positions")
        u = OpenMMEvaluator(system, args.platform)(xyz)[0] / kt_system
    result = {"system": target.name, "file": str(args.file), "backend": args.backend, "n_frames": len(u),
              "unit": "kT", "temperature_K": target.temperature, "reduced_energy": u.tolist()}
    if kt is not None:
        result["energy_kj_per_mol"] = (u * kt).tolist()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"# {target.name}: {len(u)} frame(s) from {args.file}, backend {args.backend}")
    print(f"{'frame':>6} {'u (kT)':>16}" + (f" {'E (kJ/mol)':>16}" if kt else ""))
    for i, ui in enumerate(u):
        print(f"{i:>6} {ui:>16.6f}" + (f" {ui * kt:>16.6f}" if kt else ""))
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line of one rank: ``argv`` without its --nproc option."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _launch(args, what: str) -> int:
    """Run this command as ``args.nproc`` ranks (torch.distributed's launcher); 0 when all succeed."""
    from .distributed import launch
    launch(args.nproc, _without_nproc(args.argv), what)
    return 0


def _cmd_train(args) -> int:
    from dataclasses import replace

    from . import distributed
    from .config import ExperimentConfig
    from .runtime import check_device

    device = check_device(args.device)
    from .coords.model import ICExperimentConfig, is_internal_config
    internal = is_internal_config(args.config)
    cfg = (ICExperimentConfig if internal else ExperimentConfig).load(args.config, args.set)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    out = args.out or f"runs/{Path(args.config).stem}"
    if internal and device.type != "cpu":
        raise ValueError(f"--device {args.device}: the internal-coordinate route trains on the CPU for now")
    if args.nproc > 1:                   # checked once here, before any rank starts
        batches = {"train.batch": cfg.train.batch} if internal else \
            {"train.batch": cfg.train.batch, "train.sd_batch": cfg.train.sd_batch, "train.kl_batch": cfg.train.kl_batch}
        for key, value in batches.items():
            distributed.Group(0, args.nproc).split(value, key)
        if not args.resume and (Path(out) / "checkpoint.pt").is_file():
            raise FileExistsError(f"{Path(out) / 'checkpoint.pt'} exists; pass --resume to continue or choose "
                                  "another --out")
        try:
            return _launch(args, "training")
        except distributed.RankFailed as exc:
            ckpt = Path(out) / "checkpoint.pt"
            after = (f"the last checkpoint, {ckpt}, loads; continue with --resume --nproc {args.nproc}"
                     if ckpt.is_file() else "no checkpoint was written yet")
            raise distributed.RankFailed(f"{exc}; {after}") from None
    group, device = distributed.init(device, args.timeout)
    try:
        return _train_rank(args, cfg, out, device, group, internal)
    finally:
        distributed.finish()


def _train_rank(args, cfg, out, device, group, internal: bool) -> int:
    from .coords.model import train_internal
    from .train import train
    if internal:
        st = train_internal(cfg, out, resume=args.resume, progress=not args.quiet, iterations=args.iterations,
                            group=group)
        if not group.main:
            return 0
        ev = st.get("last_eval", {})
        print(f"trained {st['iteration']} iterations ({st['cpu_seconds']:.0f} CPU-s, base fitted in "
              f"{st['base_fit_cpu_seconds']:.1f} CPU-s; {st['nonfinite_total']} non-finite batches skipped); ESS "
              f"{ev.get('eval_ess', float('nan')):.4f} (base alone {st['base_eval']['eval_ess']:.4f}) on "
              f"{cfg.train.eval_samples} fresh draws; checkpoint: {Path(out) / 'checkpoint.pt'}")
        return 0
    state = train(cfg, out, device=device, resume=args.resume, progress=not args.quiet, iterations=args.iterations,
                  group=group)
    if not group.main:
        return 0
    print(f"trained {state.iteration} iterations ({state.cpu_seconds:.0f} CPU-s in total, "
          f"{state.nonfinite_total} non-finite batches skipped); checkpoint: {Path(out) / 'checkpoint.pt'}")
    return 0


def _steps_arg(text: str):
    import argparse

    from .sampler import parse_steps
    try:
        return parse_steps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_sample(args) -> int:
    from .io import MDTRAJ_FORMATS, check_output
    from .runtime import check_device

    device = check_device(args.device)
    out = check_output(args.out, "--out", (".npz",))
    if args.traj:
        check_output(args.traj, "--traj", tuple(f for f in MDTRAJ_FORMATS if f not in (".gro", ".mdcrd")))
    from . import distributed
    from .coords.model import is_internal_checkpoint
    from .io import read_checkpoint
    peek = read_checkpoint(args.checkpoint)
    if is_internal_checkpoint(peek):
        _check_internal_sample_args(args)
    if args.nproc > 1:
        if args.qmc:
            raise ValueError("--qmc with --nproc: one Sobol' sequence is not shared out; sample it in one process")
        return _launch(args, "sampling")
    group, device = distributed.init(device, args.timeout)
    try:
        if is_internal_checkpoint(peek):
            return _sample_internal(args, peek, out, group)
        return _sample_cartesian(args, out, device, group)
    finally:
        distributed.finish()


def _sample_cartesian(args, out: Path, device, group) -> int:
    import dataclasses
    import time

    import torch

    from .distributed import draw_in_blocks
    from .flow import SobolDraws
    from .sampler import concat_samples, describe_steps, off_training_grid, sample
    from .train import load_checkpoint
    exp, ckpt = load_checkpoint(args.checkpoint, device)
    if args.traj and not exp.target.molecular:
        raise ValueError(f"--traj {args.traj}: needs a molecular system; {exp.target.name} has no topology "
                         "(the samples are in --out)")
    off = off_training_grid(args.steps, exp.config.train.n_base)
    if off and group.main:
        print(f"warning: {len(off)} of the steps (t, d) are not steps the model was trained on "
              f"(d = 2^j / N_base from a multiple of d, N_base = {exp.config.train.n_base}): "
              + ", ".join(f"({t:.6g}, {d:.6g})" for t, d in off[:4]) + (", ..." if len(off) > 4 else "")
              + "; the map there is an extrapolation (its weights stay exact where it is a bijection)",
              file=sys.stderr)
    def draw(m, draws):
        s = sample(exp.velocity(), exp.prior, exp.target, m, args.steps, args.weights, draws,
                   batch_size=args.batch_size, dtype=exp.dtype, device=exp.device)
        return dataclasses.replace(s, x=s.x.cpu(), log_q=s.log_q.cpu(), log_w=s.log_w.cpu(), log_prob=s.log_prob.cpu())

    t0 = time.perf_counter()
    if args.qmc:
        s = draw(args.n, SobolDraws(args.seed))
    else:                       # blocks of draws with their own seeds: the same samples on any number of ranks
        parts = draw_in_blocks(args.n, args.seed, draw, group)
        if parts is None:
            return 0
        s = dataclasses.replace(concat_samples(parts), seconds=time.perf_counter() - t0)
    meta = {"system": exp.target.name, "checkpoint": str(args.checkpoint), "steps": s.steps,
            "step_sizes": list(s.step_sizes), "weights": args.weights, "n": args.n, "seed": args.seed,
            "seconds": s.seconds,
            "prior_draws": s.info["prior_draws"],
            "n_nonpositive_det": s.n_nonpositive_det,
            "lipschitz_max": s.lipschitz_max if np.isfinite(s.lipschitz_max) else None,
            "fraction_monotone": s.info["fraction_monotone"] if np.isfinite(s.info["fraction_monotone"]) else None,
            "log_z_true": exp.target.log_z, "training_iterations": ckpt["state"]["iteration"],
            "training_cpu_seconds": ckpt["state"]["cpu_seconds"], "processes": group.world}
    save_samples(out, "samples", meta, x=s.x.double().cpu().numpy(), log_q=s.log_q.double().cpu().numpy(),
                 log_w=s.log_w.double().cpu().numpy(), log_prob=s.log_prob.double().cpu().numpy())
    if args.traj:
        _write_traj(args.traj, s.x.double().cpu().numpy(), exp.target.topology)
    print(f"wrote {args.n} samples ({describe_steps(args.steps)}, {args.weights} weights, {s.seconds:.1f} s) to {out}"
          + (f"; det <= 0 at {s.n_nonpositive_det} samples" if args.weights == "exact" else ""))
    return 0


def _write_traj(path: str, x: np.ndarray, topology) -> None:
    """Conformations (M, N, 3) nm as a trajectory in any mdtraj format, written to a temporary name and renamed."""
    import mdtraj
    traj = Path(path)
    tmp = traj.with_name(traj.stem + ".tmp" + traj.suffix)
    mdtraj.Trajectory(x.astype(np.float32), topology).save(str(tmp))
    os.replace(tmp, traj)


def _check_internal_sample_args(args) -> None:
    """The options an internal-coordinate checkpoint takes (checked before any process starts)."""
    if args.steps == [1.0]:
        args.steps = 1
    if not isinstance(args.steps, int) or args.steps < 1:
        raise ValueError(f"--steps {args.steps!r}: an internal-coordinate model takes K >= 1 equal steps (an integer)")
    if args.weights != "exact":
        raise ValueError(f"--weights {args.weights}: an internal-coordinate model has exact weights only")
    if args.qmc:
        raise ValueError("--qmc: not available for an internal-coordinate model")
    if args.device != "cpu":
        raise ValueError(f"--device {args.device}: the internal-coordinate sampler runs on the CPU for now")


def _sample_internal(args, ckpt: dict, out: Path, group) -> int:
    """`molsample sample` of an internal-coordinate checkpoint: one network evaluation per sample."""
    import time

    import torch
    from .runtime import progress_bar

    from .coords.model import load_internal_checkpoint
    sampler, ckpt = load_internal_checkpoint(args.checkpoint, ckpt)
    if args.steps != 1 and not sampler.flow.step_conditioned:
        raise ValueError(f"--steps {args.steps}: this internal-coordinate model is a single step (trained without "
                         "map.step_conditioned), so only --steps 1 is defined")
    from .distributed import SAMPLE_BLOCK, draw_in_blocks
    mine = sum(min(SAMPLE_BLOCK, args.n - b * SAMPLE_BLOCK) for b in range(-(-args.n // SAMPLE_BLOCK))[group.rank::group.world])
    t0 = time.perf_counter()
    with progress_bar(total=mine, desc="sample", unit=" conf", file_interval=10.0, enabled=group.main) as bar:
        def draw(m, gen):
            return sampler.draw(m, gen, chunk=args.batch_size, progress=bar, steps=args.steps)
        parts = draw_in_blocks(args.n, args.seed, draw, group)
    if parts is None:
        return 0
    d = {k: torch.cat([p[k] for p in parts]) for k in ("x", "log_q", "log_w", "sign")}
    d["out_of_domain"] = sum(int(p["out_of_domain"]) for p in parts)
    seconds = time.perf_counter() - t0
    x = d["x"].numpy()
    n_bad = int((d["sign"] <= 0).sum())
    meta = {"system": sampler.cartesian.name, "checkpoint": str(args.checkpoint), "route": "internal",
            "steps": args.steps,
            "weights": "exact", "n": args.n, "seed": args.seed, "seconds": seconds, "n_nonpositive_det": n_bad,
            "out_of_domain": int(d["out_of_domain"]), "frame": "canonical (Z-matrix root at the origin)",
            "training_iterations": ckpt["state"]["iteration"], "training_cpu_seconds": ckpt["state"]["cpu_seconds"],
            "base_fit_cpu_seconds": ckpt["state"].get("base_fit_cpu_seconds"), "processes": group.world}
    log_w = d["log_w"].numpy()
    save_samples(out, "samples", meta, x=x, log_q=d["log_q"].numpy(), log_w=log_w)
    if args.traj:
        _write_traj(args.traj, x, sampler.cartesian.topology)
    from .estimate import ess
    how = "one step" if args.steps == 1 else f"{args.steps} steps"
    print(f"wrote {args.n} samples ({how}, exact weights, {seconds:.1f} s) to {out}; Kish ESS "
          f"{ess(log_w, n_boot=0).value:.4f}; det <= 0 at {n_bad}, outside the domain {meta['out_of_domain']}")
    return 0


def _cmd_estimate(args) -> int:
    from .estimate import summarise

    from .io import open_npz

    data = open_npz(args.file)
    if "log_w" not in data:
        raise ValueError(f"{args.file}: no 'log_w' array; write it with `molsample sample`")
    log_w = np.asarray(data["log_w"], dtype=np.float64).reshape(-1)
    if len(log_w) == 0:
        raise ValueError(f"{args.file}: 'log_w' holds no samples")
    meta = read_meta(data, args.file)
    result = {"file": str(args.file), **summarise(log_w, n_boot=args.bootstrap, seed=args.seed), **{
        k: meta[k] for k in ("system", "steps", "step_sizes", "weights", "n_nonpositive_det", "lipschitz_max",
                             "fraction_monotone", "prior_draws")
        if k in meta}}
    if meta.get("log_z_true") is not None:
        result["delta_log_z"] = result["log_z"]["value"] - meta["log_z_true"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"# {args.file}: {result['log_z']['n']} samples" + (f", {meta['steps']} step(s), {meta['weights']} weights"
                                                             if meta else ""))
    for key, label in (("log_z", "log Z"), ("elbo", "ELBO"), ("ess", "ESS (Kish, normalised)")):
        e = result[key]
        print(f"{label:<24} {e['value']:>12.5f} +- {e['stderr']:.5f}")
    if "delta_log_z" in result:
        print(f"{'log Z - exact log Z':<24} {result['delta_log_z']:>12.5f}")
    if meta.get("prior_draws") == "sobol":
        print("note: the prior points are a scrambled Sobol' sequence; the bootstrap errors treat them as "
              "independent draws (usually an overestimate); the spread over `molsample sample --qmc --seed` "
              "values is the error")
    if "n_nonpositive_det" in result and meta.get("weights") == "exact":
        print(f"{'samples with det <= 0':<24} {result['n_nonpositive_det']:>12d}")
        if result.get("lipschitz_max") is not None:
            print(f"{'max bijectivity ratio':<24} {result['lipschitz_max']:>12.4f}  (< 1 needed)")
        if result.get("fraction_monotone") is not None:
            print(f"{'monotone at every step':<24} {100 * result['fraction_monotone']:>11.1f}%  (100 % suffices)")
    return 0


def _cmd_md(args) -> int:
    from .md import MDSettings, run_md

    settings = MDSettings(system=args.system, ns=args.ns, temperature=args.temperature, timestep_fs=args.timestep,
                          friction_per_ps=args.friction, report_every=args.report_every,
                          equilibration_ps=args.equilibration, minimise=not args.no_minimise,
                          platform=args.platform, seed=args.seed, chunk_frames=args.chunk_frames)
    out = args.out or f"{args.system}_md.h5"
    meta = run_md(settings, out, args.replicas, args.resume, show_progress=not args.quiet)
    print(f"wrote {', '.join(meta['files'])} and {Path(out).with_suffix('.json')} "
          f"({meta['wall_seconds']:.0f} s wall)")
    return 0


def _cmd_umbrella(args) -> int:
    from .umbrella import UmbrellaSettings, run_umbrella

    settings = UmbrellaSettings(system=args.system, dihedral=args.dihedral,
                                windows=_per_angle_arg(args.windows, "--windows", int),
                                kappa=_per_angle_arg(args.kappa, "--kappa", float),
                                ns_per_window=args.ns_per_window, equilibration_ps=args.equilibration,
                                steer_ps=args.steer, temperature=args.temperature, platform=args.platform,
                                seed=args.seed)
    from .io import check_output
    from .runtime import check_platform

    check_platform(args.platform)
    out = str(check_output(args.out or f"{args.system}_umbrella_{args.dihedral}.npz", "--out", (".npz",)))
    meta = run_umbrella(settings, out, args.workers, progress=not args.quiet)
    est = meta["estimates"]
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    d = est["dF_phi_positive_minus_negative_kT"]
    print(f"# umbrella sampling along {args.dihedral}: {args.windows} windows x {args.ns_per_window} ns, "
          f"{meta['cpu_seconds_windows'] / 60:.1f} CPU-min; wrote {out} and {Path(out).with_suffix('.json')}")
    print(f"dF(phi > 0 vs phi < 0) = {d['value']:.3f} +- {d['stderr']:.3f} kT")
    for name, v in est["basins"].items():
        print(f"p({name}) = {v['value']:.4f} +- {v['stderr']:.4f}")
    ov, win = est["overlap"], est["windows"]
    print(f"MBAR overlap {ov['scalar']:.4f} (smallest eigenvalue {ov['smallest_eigenvalue']:.2e}; weakest window "
          f"{ov['weakest_window']} overlaps {ov['weakest']:.3f} with its best neighbour); largest window g "
          f"{max(win['g']):.1f} samples; largest mean offset from a centre {win['max_abs_offset_deg']:.1f} deg")
    if win.get("n_windows_cis_or_flipped"):
        print(f"WARNING: {win['n_windows_cis_or_flipped']} window(s) visited a cis peptide bond or flipped the "
              "chirality at CA; see windows.cis_fraction / chirality_flipped_fraction in the JSON")
    return 0


def _cmd_pt(args) -> int:
    from .replica import PTSettings, parse_temperatures, run_pt

    settings = PTSettings(system=args.system, ns=args.ns, temperatures=parse_temperatures(args.temperatures),
                          exchange_ps=args.exchange_ps, timestep_fs=args.timestep, friction_per_ps=args.friction,
                          equilibration_ps=args.equilibration, platform=args.platform, seed=args.seed,
                          checkpoint_every=args.checkpoint_every)
    out = args.out or f"{args.system}_pt.npz"
    meta = run_pt(settings, out, resume=args.resume, show_progress=not args.quiet, analyse_only=args.analyse_only)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    est, s = meta["estimates"], meta["settings"]
    ladder = ", ".join(f"{t:.1f}" for t in s["temperatures"])
    print(f"# parallel tempering of {meta['system']}: {len(s['temperatures'])} temperatures ({ladder} K), "
          f"{meta['n_iterations']} of {meta['n_iterations_target']} iterations x {s['exchange_ps']} ps "
          f"({meta['ns_per_replica_done']:.3f} ns per replica), {meta['cpu_seconds']:.0f} CPU-s; "
          f"wrote {out} and {Path(out).with_suffix('.json')}")
    ex = est["exchange"]
    print("neighbour acceptance: " + ", ".join(f"{p['acceptance']:.2f}" if p["acceptance"] is not None else "-"
                                               for p in ex["neighbour_acceptance"])
          + f"; round trips {ex['round_trips']}")
    if "dF_phi_positive_minus_negative_kT" in est and not np.isfinite(est["dF_phi_positive_minus_negative_kT"]["value"]):
        print(f"dF(phi > 0 vs phi < 0): no sample on one side at any temperature; run longer or raise the top "
              "temperature")
    elif "dF_phi_positive_minus_negative_kT" in est:
        d = est["dF_phi_positive_minus_negative_kT"]
        print(f"dF(phi > 0 vs phi < 0) at {est['temperature_K']:g} K, MBAR over all temperatures = {d['value']:.3f} "
              f"+- {d['stderr']:.3f} kT (block bootstrap +- {d['stderr_bootstrap']:.3f}; halves "
              + ", ".join(f"{h:.3f}" for h in d["halves"]) + ")")
        if "replica_at_temperature" in est:
            r = est["replica_at_temperature"]["dF_phi_positive_minus_negative_kT"]
            g = est["phi_positive_inefficiency"]["g"]
            print(f"dF from the {est['temperature_K']:g} K replica alone = {r['value']:.3f} +- {r['stderr']:.3f} kT; "
                  f"statistical inefficiency of the phi > 0 indicator there g = {g:.1f} iterations")
        for name, v in est["basins"].items():
            print(f"p({name}) = {v['value']:.4f} +- {v['stderr']:.4f}")
    return 0


def _per_angle_arg(text: str, flag: str, cast):
    """'36' or '30,18' (one value per restrained angle) -> a number or a tuple."""
    try:
        vals = [cast(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes a number or comma-separated numbers (one per restrained angle), got {text!r}")
    return vals[0] if len(vals) == 1 else tuple(vals)


def _cmd_compare(args) -> int:
    from .analysis.compare import compare, write_report
    from .analysis.ensembles import load_ensemble
    from .targets import load_target

    from .io import check_output_dir

    system = args.system or _system_of(args.samples)
    target = load_target(system)
    out = Path(args.out or f"compare_{Path(args.samples).stem}")
    check_output_dir(out, "--out")
    reference = args.reference
    if not reference:
        from .targets.registry import default_reference
        default = default_reference(system)
        if default is None:
            raise ValueError(f"system {system!r} ships no reference; give one with --reference")
        reference = [str(default)]
    sample = load_ensemble([args.samples], target, args.label)
    ref = load_ensemble(reference, target, "reference")
    metrics = compare(sample, ref, target)
    report = write_report(metrics, sample, ref, out)
    if args.json:
        print(json.dumps(metrics, indent=2, default=float))
    else:
        print(report.read_text())
        print(f"report: {report}")
    return 0


def _cmd_mcmc(args) -> int:
    import torch

    from .mcmc import mala
    from .targets import load_target

    from .io import check_output

    target = load_target(args.system)
    if args.temperatures[0] != 1.0 or any(b <= a for a, b in zip(args.temperatures, args.temperatures[1:])):
        raise ValueError(f"--temperatures {' '.join(map(str, args.temperatures))}: expected an increasing ladder "
                         "starting at 1 (units of the system's temperature)")
    out = check_output(args.out or f"{args.system}_mcmc.npz", "--out", (".npz",))
    res = mala(target, args.chains, args.steps, args.burn, args.thin, args.step, seed=args.seed,
               init_scale=args.init_scale, temperatures=tuple(args.temperatures), progress=not args.quiet)
    from pymbar.timeseries import statistical_inefficiency
    g = [statistical_inefficiency(res.energy[:, c]) for c in range(min(res.energy.shape[1], 64))
         if np.ptp(res.energy[:, c]) > 0]
    xyz = res.x.reshape(-1, *target.event_shape)                 # kept states, chain-major within each time
    meta = {"system": target.name, "sampler": "MALA", "chains": args.chains, "steps": args.steps, "burn": args.burn,
            "thin": args.thin, "temperatures": args.temperatures, "step": res.step, "acceptance": res.acceptance, "seed": args.seed,
            "energy_statistical_inefficiency_per_kept_state": float(np.mean(g)), "torch": torch.__version__}
    save_samples(out, "mcmc", meta, xyz=xyz, energy=res.energy.reshape(-1))
    print(f"wrote {len(xyz)} states ({args.chains} chains, acceptance {res.acceptance:.2f}, step {res.step:.3g}, "
          f"energy inefficiency {np.mean(g):.1f} kept states) to {out}")
    return 0


def _cmd_export(args) -> int:
    from .io import check_output
    from .train import export_model, load_checkpoint

    check_output(args.out, "--out", (".pt",))
    load_checkpoint(args.checkpoint)                             # refuse anything that does not rebuild
    out = export_model(args.checkpoint, args.out)
    load_checkpoint(out)                                          # it must rebuild on its own
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _cmd_quickstart(args) -> int:
    from .io import check_output_dir
    from .quickstart import run_quickstart
    from .runtime import check_device

    check_device(args.device)
    check_output_dir(args.out, "--out")
    res = run_quickstart(args.checkpoint, args.out, args.n, args.min_weights, args.budget_seconds, args.seed,
                         args.device, progress=not args.quiet)
    print(res.report.read_text().split("\n## ")[0].split("\n# ")[0])
    print(f"report: {res.report}")
    return 0


def _cmd_pack(args) -> int:
    from .analysis.reference import pack_md, pack_weighted
    from .targets import load_target

    from .io import check_output

    target = load_target(args.system)
    check_output(args.out, "--out", (".npz",))
    prov = args.provenance or f"molsample pack-reference {args.kind} {' '.join(args.files)}"
    if args.kind == "md":
        out = pack_md(args.files, target, args.out, args.frames, prov)
    else:
        out = pack_weighted("umbrella" if args.kind == "umbrella" else "replica-exchange", args.files, target,
                            args.out, args.frames, prov, args.stride, args.frames_power)
    print(f"wrote {out} ({Path(out).stat().st_size / 1e6:.2f} MB)")
    return 0


def _system_of(path: str) -> str:
    if path.endswith(".npz"):
        from .io import open_npz

        d = open_npz(path)
        meta = read_meta(d, path)
        if "system" in meta:
            return str(meta["system"])
        if "system" in d:
            return str(d["system"])
    raise ValueError(f"{path}: cannot tell which system it belongs to; pass --system")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="molsample", description=(
        "One-step Boltzmann samplers with exact importance weights, compared against MD."))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("systems", help="list the available systems")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_systems)
    p = sub.add_parser("energy", help="reduced energies of every frame of a file")
    p.add_argument("system", help="system name (see `molsample systems`) or path to a system YAML")
    p.add_argument("file", help="PDB/DCD/HDF5/XTC (read with mdtraj) or .npz with an 'xyz' array in nm")
    p.add_argument("--backend", choices=("torch", "openmm"), default="torch")
    p.add_argument("--platform", default="Reference", help="OpenMM platform for --backend openmm")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_energy)

    p = sub.add_parser("train", help="train a one-step sampler from a config YAML")
    p.add_argument("config")
    p.add_argument("--out", help="output directory (default runs/CONFIG_NAME)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int)
    p.add_argument("--iterations", type=positive_int,
                   help="override train.iterations (on --resume: default the run's own target)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set train.kl_weight=0.1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel training on N processes of this machine (torch.distributed; gloo on the CPU, "
                        "one GPU per process with --device cuda); the global batch is split over them")
    p.add_argument("--timeout", type=positive_float, default=900.0,
                   help="seconds a process waits for the others in a collective before the run stops (default 900)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="draw K-step samples with importance weights from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=positive_int, required=True)
    p.add_argument("--steps", type=_steps_arg, default=1,
                   help="K equal deterministic steps (1 = one network evaluation), or the step sizes, "
                        "comma-separated and summing to 1, e.g. 1/4,1/4,1/4,1/8,1/16,1/16 (finer near the target)")
    p.add_argument("--weights", choices=("exact", "trace", "hutchinson", "paper"), default="exact")
    p.add_argument("--out", required=True, help=".npz with x, log_q, log_w, log_prob")
    p.add_argument("--traj", help="also write the samples as a trajectory (molecules; .pdb/.dcd/.h5)")
    p.add_argument("--batch-size", type=positive_int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qmc", action="store_true",
                   help="prior points from a scrambled Sobol' sequence seeded by --seed (randomised quasi-Monte "
                        "Carlo: unbiased, lower variance where the weights are smooth in the prior point, no gain on "
                        "heavy-tailed weights; use --n a power of two)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="share the draws over N processes (torch.distributed); the file is the one a single "
                        "process writes with the same --seed and --batch-size")
    p.add_argument("--timeout", type=positive_float, default=900.0,
                   help="seconds a process waits for the others before the run stops (default 900)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("md", help="reference molecular dynamics with OpenMM")
    p.add_argument("system")
    p.add_argument("--ns", type=positive_float, required=True, help="production length per replica (ns)")
    p.add_argument("--temperature", type=positive_float, help="K (default: the system's)")
    p.add_argument("--replicas", type=positive_int, default=1, help="independent replicas, run in parallel processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="trajectory file (.h5 default, .dcd, .xtc); default SYSTEM_md.h5")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last chunk")
    p.add_argument("--platform", default="Reference", help="OpenMM platform (Reference is fastest for ~20 atoms)")
    p.add_argument("--timestep", type=positive_float, default=1.0, help="fs")
    p.add_argument("--friction", type=nonnegative_float, default=1.0, help="1/ps")
    p.add_argument("--report-every", type=positive_int, default=1000, help="steps between frames")
    p.add_argument("--equilibration", type=nonnegative_float, default=100.0, help="ps before the first frame")
    p.add_argument("--no-minimise", action="store_true")
    p.add_argument("--chunk-frames", type=positive_int, default=1000, help="frames per checkpointed chunk")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_md)

    p = sub.add_parser("umbrella", help="umbrella sampling along a backbone dihedral + MBAR (a reference)")
    p.add_argument("system")
    p.add_argument("--dihedral", choices=("phi", "psi", "phi+psi"), default="phi",
                   help="restrained angle(s); phi+psi is a 2D grid of windows x windows")
    p.add_argument("--windows", default="36",
                   help="windows per restrained angle; for phi+psi one number or two (e.g. 30,18)")
    p.add_argument("--kappa", default="200", help="restraint constant, kJ/mol/rad^2; one number or one per angle")
    p.add_argument("--ns-per-window", type=positive_float, default=0.5)
    p.add_argument("--equilibration", type=nonnegative_float, default=50.0,
                   help="ps per window before sampling (from the previous window's end)")
    p.add_argument("--steer", type=nonnegative_float, default=20.0,
                   help="ps to move the restraint from the minimised structure to each chain's first window")
    p.add_argument("--temperature", type=positive_float)
    p.add_argument("--platform", default="Reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=positive_int, help="parallel processes (default: all cores)")
    p.add_argument("--out", help=".npz (default SYSTEM_umbrella_DIHEDRAL.npz)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_umbrella)

    p = sub.add_parser("pt", help="temperature replica exchange (parallel tempering) + MBAR over temperatures")
    p.add_argument("system")
    p.add_argument("--ns", type=float, required=True, help="production length per replica (ns)")
    p.add_argument("--temperatures", default="300:700:8",
                   help="Tmin:Tmax:n, a geometric ladder of n temperatures (K), or a comma-separated list")
    p.add_argument("--out", help="results .npz (a .json beside it, the run's storage in NAME.pt/); "
                                 "default SYSTEM_pt.npz")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last snapshot "
                                                         "(a larger --ns extends a finished one)")
    p.add_argument("--analyse-only", action="store_true", help="analyse the run's newest snapshot, simulate nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default="Reference", help="OpenMM platform (Reference is fastest for ~20 atoms)")
    p.add_argument("--exchange-ps", type=float, default=1.0, help="dynamics between exchange attempts (ps)")
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--equilibration", type=float, default=100.0, help="ps per replica before the first iteration")
    p.add_argument("--checkpoint-every", type=int, default=100, help="iterations between snapshots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_pt)

    p = sub.add_parser("compare", help="compare samples (weighted or not) with an MD or umbrella reference")
    p.add_argument("samples", help="`molsample sample` .npz, a trajectory, or an umbrella .npz")
    p.add_argument("--reference", nargs="+",
                   help="MD trajectories (one file per replica), an umbrella or replica-exchange .npz, or a "
                        "packed reference (default: the system's settled reference, see `molsample systems`)")
    p.add_argument("--system", help="system name (default: read from the samples file)")
    p.add_argument("--out", help="output directory for figures, metrics.json and report.md")
    p.add_argument("--label", help="name of the samples in the report")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("mcmc", help="reference samples by MALA on parallel chains (systems without MD)")
    p.add_argument("system")
    p.add_argument("--chains", type=positive_int, default=1024)
    p.add_argument("--steps", type=positive_int, default=20000, help="production steps per chain")
    p.add_argument("--burn", type=nonnegative_int, default=5000, help="adapted burn-in steps")
    p.add_argument("--thin", type=positive_int, default=100)
    p.add_argument("--step", type=positive_float, default=1e-3, help="initial MALA step size")
    p.add_argument("--init-scale", type=positive_float, default=1.0, help="std of the random start")
    p.add_argument("--temperatures", type=positive_float, nargs="+", default=[1.0],
                   help="parallel-tempering ladder in units of the system's temperature, starting at 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_mcmc)

    p = sub.add_parser("export-model", help="a sampling-only copy of a checkpoint (EMA weights and config)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("quickstart", help="alanine dipeptide in one step: sample, exact weights, compare with MD")
    p.add_argument("--checkpoint", help="one-step checkpoint (default: the shipped alanine dipeptide model)")
    p.add_argument("--out", default="quickstart_aldp", help="report directory")
    p.add_argument("--n", type=positive_int, default=100_000, help="conformations to draw")
    p.add_argument("--min-weights", type=positive_int, default=20_000, help="exact weights computed at least")
    p.add_argument("--budget-seconds", type=nonnegative_float, default=600.0, help="wall-time budget of the whole run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("pack-reference", help="pack MD, umbrella or replica-exchange output into a compact "
                                              "reference (< 5 MB)")
    p.add_argument("kind", choices=("md", "umbrella", "pt"))
    p.add_argument("files", nargs="+", help="md: one trajectory per replica; umbrella, pt: one .npz per "
                                            "independent run (seed), combined as their mean")
    p.add_argument("--system", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=positive_int, default=4000, help="conformations kept")
    p.add_argument("--provenance", help="how the inputs were produced (stored in the file)")
    p.add_argument("--stride", type=positive_int, default=1,
                   help="umbrella, pt: keep every k-th sample's angles and weight")
    p.add_argument("--frames-power", type=nonnegative_float, default=1.0,
                   help="umbrella, pt: draw the kept conformations with probability w^p and store their remaining "
                        "log weight (1 - p) log w (1: equal-weight frames; 0.5: rare states more often)")
    p.set_defaults(func=_cmd_pack)

    p = sub.add_parser("estimate", help="log Z, ELBO and ESS with errors from a samples file")
    p.add_argument("file")
    p.add_argument("--bootstrap", type=nonnegative_int, default=200, help="bootstrap resamples for standard errors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_estimate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from .config import ConfigError
    from .distributed import RankFailed, launched
    from .runtime import Interrupted
    from .targets import SystemBuildError, UnsupportedForceError
    from .train import TrainingDiverged
    name = f"molsample {args.command}"
    if launched():                       # one rank of several: say which
        name += f" [rank {os.environ.get('RANK', '?')}]"
    try:
        return int(args.func(args) or 0)
    except RankFailed as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted (what was already saved is kept; md and train continue with --resume)",
              file=sys.stderr)
        return 2
    except (ConfigError, SystemBuildError, UnsupportedForceError, FileNotFoundError, FileExistsError,
            ValueError, TrainingDiverged) as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:               # permission, full disk, a directory where a file was expected, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not launched():
            raise
        # a collective failed: another rank died (its launcher names it) or the process-group timeout passed
        print(f"{name}: stopped: a collective with the other processes failed ({_one_line(exc)[:160]})",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) if str(exc).strip() else type(exc).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
