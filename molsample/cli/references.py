"""`systems`, `energy`, `md`, `umbrella`, `pt`, `mcmc`, `pack-reference` and `compare`: the commands that
describe systems, produce references and compare against them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import read_meta, save_samples
from .args import _per_angle_arg


def _cmd_systems(args) -> int:
    from ..targets.registry import load_target, spec_dict, system_files

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

    from ..io import read_positions
    from ..targets import OpenMMEvaluator, load_target

    target = load_target(args.system)
    if args.backend == "openmm":
        from ..runtime import check_platform
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


def _cmd_md(args) -> int:
    from ..md import MDSettings, run_md

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
    from ..umbrella import UmbrellaSettings, run_umbrella

    settings = UmbrellaSettings(system=args.system, dihedral=args.dihedral,
                                windows=_per_angle_arg(args.windows, "--windows", int),
                                kappa=_per_angle_arg(args.kappa, "--kappa", float),
                                ns_per_window=args.ns_per_window, equilibration_ps=args.equilibration,
                                steer_ps=args.steer, temperature=args.temperature, platform=args.platform,
                                seed=args.seed, residue=args.residue)
    from ..io import check_output
    from ..runtime import check_platform

    check_platform(args.platform)
    out = str(check_output(args.out or f"{args.system}_umbrella_{args.dihedral}.npz", "--out", (".npz",)))
    meta = run_umbrella(settings, out, args.workers, progress=not args.quiet)
    est = meta["estimates"]
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    d = est["dF_phi_positive_minus_negative_kT"]
    print(f"# umbrella sampling along {est['residue']}'s {args.dihedral}: {args.windows} windows x {args.ns_per_window} ns, "
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
    from ..replica import PTSettings, parse_temperatures, run_pt

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
        print("dF(phi > 0 vs phi < 0): no sample on one side at any temperature; run longer or raise the top "
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


def _cmd_compare(args) -> int:
    from ..analysis.compare import compare, write_report
    from ..analysis.ensembles import load_ensemble
    from ..targets import load_target

    from ..io import check_output_dir

    system = args.system or _system_of(args.samples)
    target = load_target(system)
    out = Path(args.out or f"compare_{Path(args.samples).stem}")
    check_output_dir(out, "--out")
    reference = args.reference
    if not reference:
        from ..targets.registry import default_reference
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

    from ..mcmc import mala
    from ..targets import load_target

    from ..io import check_output

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


def _cmd_pack(args) -> int:
    from ..analysis.reference import pack_md, pack_weighted
    from ..targets import load_target

    from ..io import check_output

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
        from ..io import open_npz

        d = open_npz(path)
        meta = read_meta(d, path)
        if "system" in meta:
            return str(meta["system"])
        if "system" in d:
            return str(d["system"])
    raise ValueError(f"{path}: cannot tell which system it belongs to; pass --system")
