"""Temperature replica exchange (parallel tempering) as an MD reference, on openmmtools.

One replica per temperature of a ladder runs Langevin dynamics (LangevinMiddleIntegrator through
openmmtools' ``LangevinDynamicsMove``) on the system's own ``openmm.System``; between segments of
``exchange_ps`` neighbouring temperatures attempt to swap configurations (Metropolis on
(beta_i - beta_j)(E_i - E_j)). Velocities are redrawn from Maxwell-Boltzmann at the replica's
temperature at the start of every segment, so an exchanged configuration never carries velocities
of another temperature.

Storage and resume: openmmtools' MultiStateReporter writes NetCDF files (``storage.nc``,
``storage_checkpoint.nc``) in the run directory. Every ``checkpoint_every`` iterations the files are
closed and copied into a new ``snap_<iteration>`` directory that appears by an atomic rename, after
which older snapshots are removed. ``--resume`` restores the newest complete snapshot and continues
from its last iteration with openmmtools' ``from_storage``: iterations after the snapshot (and
whatever a kill -9 left half-written in the live files) are discarded and run again, so none is lost
or counted twice.

Analysis (:func:`analyse_run`, on a finished or a partial run) reads the newest snapshot, orders the
data by temperature (energies, phi/psi per iteration and temperature) and combines all temperatures
with MBAR (pymbar) on samples decorrelated by each temperature's statistical inefficiency, with
reduced potentials u_k(x) = E(x) / (k_B T_k): dF(phi > 0 vs phi < 0) and the basin populations at the
system's temperature, with MBAR's asymptotic errors, a block bootstrap and independent halves; beside
it the plain estimate from the replica at that temperature, neighbour acceptance, round trips and the
statistical inefficiency of the phi > 0 indicator.
"""
from .analysis import analyse_run, mbar_temperatures, neighbour_acceptance, round_trips
from .run import run_pt
from .settings import CHECKPOINT, STORAGE, PTSettings, parse_temperatures, run_directory, validate_temperatures
from .storage import latest_snapshot, read_storage, run_pt_system

__all__ = ["CHECKPOINT", "STORAGE", "PTSettings", "analyse_run", "latest_snapshot", "mbar_temperatures",
           "neighbour_acceptance", "parse_temperatures", "read_storage", "round_trips", "run_directory", "run_pt",
           "run_pt_system", "validate_temperatures"]
