"""The ``molsample`` command line.

Bad input ends with exit code 2 and one line on stderr that names the flag, key or file, the
value and what is expected; inputs are checked before long work starts, so nothing is left
half-written. Ctrl-C during ``md`` or ``train`` saves what the run has and says how to continue.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..distributed import DEFAULT_TIMEOUT_S
from .args import _Parser, _steps_arg, nonnegative_float, nonnegative_int, positive_float, positive_int
from .models import _cmd_estimate, _cmd_export, _cmd_quickstart, _cmd_sample, _cmd_train
from .references import (_cmd_compare, _cmd_energy, _cmd_md, _cmd_mcmc, _cmd_pack, _cmd_pt, _cmd_systems,
                         _cmd_umbrella)


def _processes(p: argparse.ArgumentParser, what: str) -> None:
    """--nproc (what it does for this command) and --timeout, for the commands that run on several processes."""
    p.add_argument("--nproc", type=positive_int, default=1, help=what)
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the others in a collective before the run stops "
                        f"(default {DEFAULT_TIMEOUT_S:g})")


def _model_commands(sub) -> None:
    """The sub-commands train, sample, estimate, export-model, quickstart."""
    p = sub.add_parser("train", help="train a one-step sampler from a config YAML")
    p.add_argument("config")
    p.add_argument("--out", help="output directory (default runs/CONFIG_NAME)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int)
    p.add_argument("--iterations", type=positive_int,
                   help="override train.iterations (on --resume: default the run's own target)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set train.kl.weight=0.1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _processes(p, "data-parallel training on N processes of this machine (torch.distributed; gloo on the CPU, one "
                  "GPU per process with --device cuda); the global batch is split over them")
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
    _processes(p, "share the draws over N processes (torch.distributed); the file is the one a single process "
                  "writes with the same --seed and --batch-size")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("estimate", help="log Z, ELBO and ESS with errors from a samples file")
    p.add_argument("file")
    p.add_argument("--bootstrap", type=nonnegative_int, default=200, help="bootstrap resamples for standard errors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_estimate)

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


def _reference_commands(sub) -> None:
    """The sub-commands that run references: md, umbrella, pt."""
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
    p.add_argument("--residue", type=positive_int, default=1,
                   help="whose phi and psi: the k-th residue that has both (1, the default, is the first; "
                        "ala3 has ALA2, ALA3, ALA4)")
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



def _system_commands(sub) -> None:
    """The sub-commands systems, energy, compare, mcmc, pack-reference."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="molsample", description=(
        "One-step Boltzmann samplers with exact importance weights, compared against MD."))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_system_commands, _model_commands, _reference_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from ..config import ConfigError
    from ..distributed import RankFailed, launched
    from ..runtime import Interrupted
    from ..targets import SystemBuildError, UnsupportedForceError
    from ..train import TrainingDiverged
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
