"""The ``molsample`` command line."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _cmd_systems(args) -> int:
    from .targets.registry import load_target, spec_dict, system_files

    rows = []
    for name, path in system_files().items():
        target = load_target(path)
        spec = spec_dict(path)
        rows.append({**target.describe(), "kind": spec["kind"], "file": str(path),
                     "forcefield": list(spec.get("forcefield", ())) or None,
                     "description": spec.get("description", "")})
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
    return 0


def _cmd_energy(args) -> int:
    import torch

    from .io import read_positions
    from .targets import OpenMMEvaluator, load_target

    target = load_target(args.system)
    topology = getattr(target, "topology", None)
    xyz = read_positions(args.file, target.event_shape, topology)
    kt = getattr(target, "kt", None)
    if args.backend == "torch":
        x = torch.as_tensor(xyz, dtype=getattr(torch, args.dtype))
        with torch.no_grad():
            u = torch.cat([target.energy(c) for c in torch.split(x, 4096)]).double().numpy()
    else:
        if not hasattr(target, "openmm_system"):
            raise SystemExit(f"error: system {target.name!r} has no OpenMM form; use --backend torch")
        system, kt_system = target.openmm_system()
        if not np.all(np.isfinite(xyz)):
            raise SystemExit(f"error: {args.file} contains NaN or inf positions")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molsample", description=(
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError
    from .io import TopologyMismatchError
    from .targets import SystemBuildError, UnsupportedForceError
    try:
        return int(args.func(args) or 0)
    except (ConfigError, TopologyMismatchError, SystemBuildError, UnsupportedForceError,
            FileNotFoundError, ValueError) as exc:
        print(f"molsample {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
