"""`train`, `sample`, `estimate`, `export-model` and `quickstart`: the commands that train and use a sampler
(several processes with --nproc, molsample.distributed)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..io import read_meta, save_samples


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
    from ..distributed import launch
    launch(args.nproc, _without_nproc(args.argv), what)
    return 0


def _cmd_train(args) -> int:
    from dataclasses import replace

    from .. import distributed
    from ..config import ExperimentConfig
    from ..runtime import check_device

    device = check_device(args.device)
    from ..coords.model import ICExperimentConfig, is_internal_config
    internal = is_internal_config(args.config)
    cfg = (ICExperimentConfig if internal else ExperimentConfig).load(args.config, args.set)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    out = args.out or f"runs/{Path(args.config).stem}"
    if internal and device.type != "cpu":
        raise ValueError(f"--device {args.device}: the internal-coordinate route trains on the CPU for now")
    if args.nproc > 1:                   # checked once here, before any rank starts
        batches = {"train.batch": cfg.train.batch} if internal else \
            {"train.batch": cfg.train.batch, "train.distill.batch": cfg.train.distill.batch,
             "train.kl.batch": cfg.train.kl.batch}
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
    from ..coords.training import train_internal
    from ..train import train
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


def _cmd_sample(args) -> int:
    from ..io import MDTRAJ_FORMATS, check_output
    from ..runtime import check_device

    device = check_device(args.device)
    out = check_output(args.out, "--out", (".npz",))
    if args.traj:
        check_output(args.traj, "--traj", tuple(f for f in MDTRAJ_FORMATS if f not in (".gro", ".mdcrd")))
    from .. import distributed
    from ..coords.model import is_internal_checkpoint
    from ..io import read_checkpoint
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


    from ..distributed import draw_in_blocks
    from ..flow import SobolDraws
    from ..sampler import concat_samples, describe_steps, off_training_grid, sample
    from ..train import load_checkpoint
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
    from ..runtime import progress_bar

    from ..coords.model import load_internal_checkpoint
    sampler, ckpt = load_internal_checkpoint(args.checkpoint, ckpt)
    if args.steps != 1 and not sampler.flow.step_conditioned:
        raise ValueError(f"--steps {args.steps}: this internal-coordinate model is a single step (trained without "
                         "map.step_conditioned), so only --steps 1 is defined")
    from ..distributed import blocks, draw_in_blocks
    mine = sum(m for _, m in blocks(args.n, group))
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
    from ..estimate import ess
    how = "one step" if args.steps == 1 else f"{args.steps} steps"
    print(f"wrote {args.n} samples ({how}, exact weights, {seconds:.1f} s) to {out}; Kish ESS "
          f"{ess(log_w, n_boot=0).value:.4f}; det <= 0 at {n_bad}, outside the domain {meta['out_of_domain']}")
    return 0


def _cmd_estimate(args) -> int:
    from ..estimate import summarise

    from ..io import open_npz

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


def _cmd_export(args) -> int:
    from ..io import check_output
    from ..train import export_model, load_checkpoint

    check_output(args.out, "--out", (".pt",))
    load_checkpoint(args.checkpoint)                             # refuse anything that does not rebuild
    out = export_model(args.checkpoint, args.out)
    load_checkpoint(out)                                          # it must rebuild on its own
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _cmd_quickstart(args) -> int:
    from ..io import check_output_dir
    from ..quickstart import run_quickstart
    from ..runtime import check_device

    check_device(args.device)
    check_output_dir(args.out, "--out")
    res = run_quickstart(args.checkpoint, args.out, args.n, args.min_weights, args.budget_seconds, args.seed,
                         args.device, progress=not args.quiet)
    print(res.report.read_text().split("\n## ")[0].split("\n# ")[0])
    print(f"report: {res.report}")
    return 0
