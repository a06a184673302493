"""Experiment configuration of the Cartesian routes (energy and data): the model, schedule, prior, train (with
its lr, distill, hinge and kl sections) and data sections as strict frozen dataclasses (molsample.schema)."""
from __future__ import annotations

import dataclasses
import math
import typing

from .schema import ConfigError, apply_overrides, check_ranges, from_dict, load_yaml

__all__ = ["ConfigError", "load_yaml", "from_dict", "check_ranges", "apply_overrides", "ModelConfig",
           "ScheduleConfig", "PriorConfig", "LrConfig", "DistillConfig", "HingeConfig", "KLConfig", "TrainConfig",
           "DataConfig", "ExperimentConfig", "TRAIN_KEYS_MOVED", "MOVED_TO_TRAIN", "nest_train_keys"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The drift network."""

    def __post_init__(self):
        check_ranges(self, "model", {"hidden": ">=1", "layers": ">=1", "n_freq": ">=1", "langevin_clip": ">0",
                                     "n_rbf": ">=1", "r_max": ">0"})
    kind: typing.Literal["mlp", "egnn"] = "mlp"
    hidden: int = 128
    layers: int = 3
    n_freq: int = 8
    langevin_clip: float = 100.0
    n_rbf: int = 16
    r_max: float = 1.0


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Cosine VP schedule and prior scale s0."""

    def __post_init__(self):
        check_ranges(self, "schedule", {"s0": ">0", "beta_min": ">=0", "beta_max": ">0", "c": ">=0"})
    s0: float = 1.0
    beta_min: float = 0.01
    beta_max: float = 10.0
    c: float = 0.008


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """The prior p0: ``isotropic`` N(0, s0^2 I), or ``harmonic`` (molecules: bonded atoms about
    ``bond_scale`` apart per coordinate, see flow.HarmonicPrior); s0 is the schedule's."""
    kind: typing.Literal["isotropic", "harmonic"] = "isotropic"
    bond_scale: float = 0.1

    def __post_init__(self):
        check_ranges(self, "prior", {"bond_scale": ">0"})


@dataclasses.dataclass(frozen=True)
class LrConfig:
    """``train.lr``: the learning rate. ``schedule: cosine``: it stays at ``value`` until iteration
    ``decay_start``, then follows a half cosine down to ``final`` at ``train.iterations`` (a function of the
    iteration alone, so ``--resume`` continues it exactly; extending a run with ``--iterations`` stretches the
    remaining decay). ``constant`` (default): ``value`` throughout."""
    value: float = 5e-4
    schedule: typing.Literal["constant", "cosine"] = "constant"
    decay_start: int = 0
    final: float = 0.0

    def __post_init__(self):
        check_ranges(self, "train.lr", {"value": ">0", "decay_start": ">=0", "final": ">=0"})
        if self.schedule == "cosine" and not self.final <= self.value:
            raise ConfigError(f"train.lr.final = {self.final} must lie in [0, value = {self.value}]")


def learning_rate(cfg, iteration: int) -> float:
    """The learning rate of iteration ``iteration`` (0-based) of a :class:`TrainConfig` under ``cfg.lr.schedule``."""
    if cfg.lr.schedule == "constant" or iteration < cfg.lr.decay_start:
        return cfg.lr.value
    span = max(cfg.iterations - cfg.lr.decay_start, 1)
    progress = min(1.0, (iteration - cfg.lr.decay_start) / span)
    return cfg.lr.final + 0.5 * (cfg.lr.value - cfg.lr.final) * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """``train.distill``: self-distillation of the big steps (see docs/method.md).

    ``weight``: self-consistency (one step of size 2d = two of size d), from iteration ``start``, ramped in
    linearly over ``ramp`` iterations, on ``batch`` rows. ``volume_weight``: volume consistency (its
    ``volume_form``), ``jacobian_weight``: the Jacobian penalty.

    ``states``: where these terms are trained: ``path``, the training path's states (the energy route's SDE
    paths, which ``train.explore_noise`` > 1 widens; the data route's interpolants), or ``flow``, the states
    the deterministic K-step sampler itself visits (fresh prior draws advanced by t/d steps of size d with the
    EMA model, which is what sampling uses); then the hinge is evaluated there too.

    ``metric``: how the residual x_tgt - x_pred is measured: ``euclidean`` (default; in units of the prior
    scale s0), or ``target``: each coordinate weighted by the local precision of the marginal the big step
    ends in (losses.marginal_precision: from the diagonal of the target energy's Hessian, relative to
    1 / s0^2, clamped to [``metric_floor``, ``metric_cap``]). Near t = 1 that measures the error relative to
    the target's local width, so a narrow region (a funnel's neck) is not outweighed by wide ones whose
    absolute errors are as large; towards t = 0 it tends to the prior's precision. Costs one score backward
    pass per coordinate (small vector targets)."""
    weight: float = 0.25
    start: int = 0
    ramp: int = 2500
    batch: int = 256
    states: typing.Literal["path", "flow"] = "path"
    metric: typing.Literal["euclidean", "target"] = "euclidean"
    metric_floor: float = 0.01
    metric_cap: float = 100.0
    volume_weight: float = 0.25
    volume_form: typing.Literal["paper", "exact", "trace"] = "paper"
    jacobian_weight: float = 1e-4

    def __post_init__(self):
        check_ranges(self, "train.distill", {"weight": ">=0", "start": ">=0", "ramp": ">=0", "batch": ">=1",
                                             "volume_weight": ">=0", "jacobian_weight": ">=0"})
        if not (0 < self.metric_floor <= 1 <= self.metric_cap):
            raise ConfigError(f"train.distill.metric_floor = {self.metric_floor}, metric_cap = {self.metric_cap}: "
                              "need 0 < metric_floor <= 1 <= metric_cap")


@dataclasses.dataclass(frozen=True)
class HingeConfig:
    """``train.hinge``: ``weight`` > 0 enforces bijectivity of the big steps the self-consistency loss
    samples (exact weights are valid only for a bijective map) by a linear hinge on a per-sample estimate.
    ``form: lipschitz``: the ratio ||J_r||_2 / c of Phi = c x + r(x) must stay below ``bound`` (forbids strong
    stretching); ``monotone``: the smallest eigenvalue of the symmetric part of the step Jacobian, over c,
    must stay above ``bound`` (a monotone map is injective with any amount of stretching). ``iterations``:
    power (lipschitz) or Lanczos (monotone) iterations per estimate. ``states``: where the hinge is
    evaluated: ``path`` (the training path's states) or ``flow`` (the deterministic sampler's states, as
    for ``train.distill.states``; a coarse-K trajectory can leave the path's region, and a fold there
    invalidates the weights of that K).

    ``prior_scale`` > 1 (``states: flow`` only): half of the hinge's states are the deterministic sampler's
    states from prior draws scaled by this factor, so the hinge also sees where the prior's tail goes (the
    coarse maps fold first there: benchmarks/diag_folds.py). ``min_step``: the hinge applies only to big
    steps of size d >= this (0: all); a strong hinge that makes the coarse maps bijective can blunt the fine
    ones, which may not need it."""
    weight: float = 0.0
    form: typing.Literal["lipschitz", "monotone"] = "lipschitz"
    bound: float = 0.9
    iterations: int = 12
    states: typing.Literal["path", "flow"] = "path"
    prior_scale: float = 1.0
    min_step: float = 0.0

    def __post_init__(self):
        check_ranges(self, "train.hinge", {"weight": ">=0", "iterations": ">=1", "min_step": ">=0"})
        if self.prior_scale <= 0 or (self.prior_scale != 1.0 and self.states != "flow"):
            raise ConfigError(f"train.hinge.prior_scale = {self.prior_scale} must be positive, and other than 1 "
                              "only with states: flow")


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """``train.kl``: ``weight`` > 0 adds the reverse KL of the ONE-step map to the target, with the exact
    log-determinant (energy-based fine-tuning of what K = 1 samples, from iteration ``start``, on ``batch``
    prior draws; both routes). Energies above ``energy_cap`` (kT) enter as cap + log(1 + u - cap), as
    Boltzmann-generator training does, so clashes do not dominate the gradient. Reverse KL alone is
    mode-seeking: the diffusion / flow-matching and self-consistency losses continue beside it."""
    weight: float = 0.0
    batch: int = 32
    start: int = 0
    energy_cap: float = 1000.0

    def __post_init__(self):
        check_ranges(self, "train.kl", {"weight": ">=0", "batch": ">=1", "start": ">=0", "energy_cap": ">0"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and losses (see docs/method.md: diffusion + self-consistency + volume + Jacobian), with
    the sections ``lr``, ``distill``, ``hinge`` and ``kl``.

    ``clip_per_loss``: the gradient of the base loss (diffusion loss, or flow matching on the data
    route) and that of the distillation terms (self-consistency, volume, Jacobian, hinge, one-step KL)
    are each clipped to ``grad_clip`` and then added, instead of clipping their sum. With one clip on
    the sum the base loss's gradient sets the scale (norm ~400 against ~0.5 for self-consistency on
    mw54), so the one-step map is hardly trained; the OSDS reference code likewise takes a separately
    clipped optimiser step for each.

    ``explore_noise`` > 1 (log-variance loss only): the training paths are simulated with the
    Euler-Maruyama noise scaled by this factor (an off-policy behaviour that crosses barriers more
    often); the log-variance loss re-evaluates the model's own kernels on them, so its minimiser is
    unchanged. ``init_checkpoint``: start from the EMA weights of an earlier run (e.g. a fine-tuning stage
    after a full training).
    """

    def __post_init__(self):
        if self.explore_noise != 1.0 and self.diffusion_loss != "log-variance":
            raise ConfigError(f"train: explore_noise = {self.explore_noise} needs diffusion_loss: log-variance "
                              "(the reverse KL must be taken on the model's own paths)")
        if self.explore_noise <= 0:
            raise ConfigError(f"train: explore_noise must be positive, got {self.explore_noise}")
        check_ranges(self, "train", {
            "n_base": ">=1", "batch": ">=1", "iterations": ">=1", "weight_decay": ">=0", "grad_clip": ">0",
            "ema": "[0,1)", "checkpoint_every": ">=1", "eval_every": ">=1", "eval_samples": ">=1",
            "max_nonfinite": ">=0"})
        if self.n_base < 2 or self.n_base & (self.n_base - 1):
            raise ConfigError(f"train.n_base = {self.n_base}: must be a power of two, at least 2 (big steps are "
                              "2^j / n_base)")
    n_base: int = 32
    batch: int = 256
    iterations: int = 1000
    lr: LrConfig = LrConfig()
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    clip_per_loss: bool = False
    ema: float = 0.999
    diffusion_loss: typing.Literal["kl", "log-variance"] = "kl"
    explore_noise: float = 1.0
    detach_score: bool = True
    distill: DistillConfig = DistillConfig()
    hinge: HingeConfig = HingeConfig()
    kl: KLConfig = KLConfig()
    init_checkpoint: str = ""
    checkpoint_every: int = 100
    eval_every: int = 100
    eval_samples: int = 1024
    eval_weights: typing.Literal["exact", "trace", "hutchinson", "paper"] = "exact"
    max_nonfinite: int = 20


# flat ``train:`` keys of earlier versions -> (section, key) now
TRAIN_KEYS_MOVED = {
    "lr_schedule": ("lr", "schedule"), "lr_decay_start": ("lr", "decay_start"), "lr_final": ("lr", "final"),
    "sd_weight": ("distill", "weight"), "sd_start": ("distill", "start"), "sd_ramp": ("distill", "ramp"),
    "sd_batch": ("distill", "batch"), "sd_states": ("distill", "states"), "sd_metric": ("distill", "metric"),
    "sd_metric_floor": ("distill", "metric_floor"), "sd_metric_cap": ("distill", "metric_cap"),
    "vol_weight": ("distill", "volume_weight"), "vol_form": ("distill", "volume_form"),
    "jac_weight": ("distill", "jacobian_weight"),
    "bij_weight": ("hinge", "weight"), "bij_form": ("hinge", "form"), "bij_bound": ("hinge", "bound"),
    "bij_iterations": ("hinge", "iterations"), "bij_states": ("hinge", "states"),
    "bij_prior_scale": ("hinge", "prior_scale"), "bij_min_step": ("hinge", "min_step"),
    "kl_weight": ("kl", "weight"), "kl_batch": ("kl", "batch"), "kl_start": ("kl", "start"),
    "energy_cap": ("kl", "energy_cap"),
}


def nest_train_keys(train: dict) -> dict:
    """An earlier version's flat ``train:`` mapping in today's sections (a number under ``lr`` is
    ``lr.value``); keys already in sections are left as they are."""
    out = {k: v for k, v in train.items() if k not in TRAIN_KEYS_MOVED}
    if "lr" in out and not isinstance(out["lr"], dict):
        out["lr"] = {"value": out["lr"]}
    for key, (section, new) in TRAIN_KEYS_MOVED.items():
        if key in train:
            out[section] = {**(out.get(section) or {}), new: train[key]}
    return out


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Reference samples for the data-assisted route: the base flow is learned by flow matching on
    them (linear interpolant from the prior), then self-distilled to large steps.

    ``path``: a file of frames (``molsample umbrella`` / ``molsample md`` output, a compact reference,
    or a trajectory mdtraj reads). Frames are drawn with probability proportional to w^weight_power
    (w: the file's per-frame Boltzmann weights; 1 reproduces the reference distribution, smaller
    values flatten it so that the proposal covers rare states; exact weights correct for it).
    ``mirror``: reflect half of the frames (valid for mirror-symmetric force fields, see TARGETS).
    ``align``: after the minibatch OT coupling, move each frame within its symmetry orbit to lie close to
    its prior partner (``rotation``: proper rotations; ``rotation-permutation``: also relabel identical
    particles, for LJ and DW4): equivariant OT flow matching, shorter paths for the same marginals.
    The one-step reverse KL and ``init_checkpoint`` (both routes) are ``train:`` keys.
    """
    path: str
    weight_power: float = 1.0
    mirror: bool = True
    ot_coupling: bool = True
    align: typing.Literal["none", "rotation", "rotation-permutation"] = "none"
    fm_weight: float = 1.0

    def __post_init__(self):
        check_ranges(self, "data", {"weight_power": ">=0", "fm_weight": ">=0"})


# keys that were ``data:`` keys in earlier versions and are ``train:`` keys now
MOVED_TO_TRAIN = ("kl_weight", "kl_batch", "kl_start", "energy_cap", "init_checkpoint")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One training run: target, network, schedule, training settings."""
    target: str
    seed: int = 0
    dtype: typing.Literal["float32", "float64"] = "float32"
    model: ModelConfig = ModelConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    prior: PriorConfig = PriorConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig | None = None
    description: str = ""

    @property
    def route(self) -> str:
        """``energy`` (data-free, METHOD) or ``data`` (flow matching on reference samples)."""
        return "data" if self.data is not None else "energy"

    @classmethod
    def load(cls, path, overrides=()) -> "ExperimentConfig":
        """Read a config YAML; ``overrides`` are ``section.key=value`` strings (value in YAML syntax)
        applied before checking, so a mistyped key is an error like one in the file."""
        data = apply_overrides(load_yaml(path), overrides)
        moved = sorted(set(data.get("data") or {}) & set(MOVED_TO_TRAIN))
        if moved:
            where = ", ".join(f"train.{'.'.join(TRAIN_KEYS_MOVED.get(k, (k,)))}" for k in moved)
            raise ConfigError(f"{path}: data: key(s) {moved} belong under train: (as {where}; the one-step "
                              "reverse KL and init_checkpoint apply to both routes)")
        train = data.get("train")
        if isinstance(train, dict):
            flat = [k for k in train if k in TRAIN_KEYS_MOVED]
            if flat:
                where = ", ".join(f"{k} -> train.{'.'.join(TRAIN_KEYS_MOVED[k])}" for k in flat)
                raise ConfigError(f"{path}: train: key(s) {flat} are in sections now ({where})")
            if "lr" in train and not isinstance(train["lr"], dict):
                raise ConfigError(f"{path}: train.lr is a section now (value, schedule, decay_start, final): "
                                  f"write lr: {{value: {train['lr']}}}, or override train.lr.value=...")
        return from_dict(cls, data, str(path))

    @classmethod
    def from_saved(cls, data: dict, where: str) -> "ExperimentConfig":
        """A config stored in a checkpoint; keys that have since moved section are moved (the one-step KL's
        ``data:`` keys, the flat ``train:`` keys of earlier versions), keys added since get their defaults."""
        data = {**data}
        train = {**(data.get("train") or {})}
        if isinstance(data.get("data"), dict) and set(data["data"]) & set(MOVED_TO_TRAIN):
            section = {**data["data"]}
            train.update({k: section.pop(k) for k in MOVED_TO_TRAIN if k in section})
            data["data"] = section
        if train:
            data["train"] = nest_train_keys(train)
        return from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
