"""The configuration of the internal-coordinate route (``route: internal``): data, base, map and training
sections as strict frozen dataclasses (an unknown key is an error that names it)."""
from __future__ import annotations

import dataclasses
import typing

from ..schema import ConfigError, apply_overrides, check_ranges, from_dict, load_yaml


@dataclasses.dataclass(frozen=True)
class ICDataConfig:
    paths: tuple[str, ...]                 # reference frames (umbrella / replica-exchange / MD files)
    shares: tuple[float, ...] = ()         # share of the total weight per file (default: equal)
    weight_power: float = 1.0              # frames weighted by w^power (< 1: flatter, covers rare states)

    def __post_init__(self):
        check_ranges(self, "data", {"weight_power": ">=0"})
        if not self.paths:
            raise ConfigError("data.paths: give at least one file of reference frames")
        if self.shares and (len(self.shares) != len(self.paths) or min(self.shares) <= 0):
            raise ConfigError(f"data.shares: one positive share per file in data.paths ({len(self.paths)}), "
                              f"got {list(self.shares)}")


@dataclasses.dataclass(frozen=True)
class ICBaseConfig:
    stiff_below: float = 0.35
    bins_2d: int = 36
    bins_1d: int = 72
    smooth_bins: float = 1.0
    floor: float = 0.05
    order: int = 2
    ridge: float = 1.0e-3
    refine_rounds: int = 0                 # refits of the base to its own draws weighted by exp(-u) / q
    refine_samples: int = 100000           # draws per refit
    refine_min_ess: float = 0.0            # refit to w^beta, beta <= 1 the largest whose Kish ESS is at least this
    local: bool = False                    # p(h | s) as a sparse network along the bond graph (else one full covariance)
    parent_bonds: int = 0                  # local: earlier coordinates within this many bonds are parents (-1: none)
    torsion_bonds: int = 0                 # local: soft torsions about bonds within this many bonds feed the mean (-1: none)
    state_mixture: float = 0.0             # > 0: this share of the draws from one base per residue's phi > 0 frames
    state_power: float = 0.5               # those components fitted to the frames weighted by w^state_power

    def __post_init__(self):
        check_ranges(self, "base", {"stiff_below": ">=0", "bins_2d": ">=1", "bins_1d": ">=1", "smooth_bins": ">=0",
                                    "floor": "[0,1]", "order": ">=0", "ridge": ">=0", "refine_rounds": ">=0",
                                    "refine_samples": ">=1", "refine_min_ess": "[0,1]", "parent_bonds": ">=-1",
                                    "torsion_bonds": ">=-1", "state_power": ">=0"})
        if not 0 <= self.state_mixture < 1:
            raise ConfigError(f"base.state_mixture = {self.state_mixture}: the share of the per-state components "
                              "must lie in [0, 1)")
        if not self.local:
            for key in ("parent_bonds", "torsion_bonds"):
                if getattr(self, key) != 0:
                    raise ConfigError(f"base.{key}: applies to the local network only (set base.local: true)")

    def fit_kwargs(self) -> dict:
        return {k: getattr(self, k) for k in ("stiff_below", "bins_2d", "bins_1d", "smooth_bins", "floor", "order",
                                              "ridge", "local", "parent_bonds", "torsion_bonds")}


@dataclasses.dataclass(frozen=True)
class ICMapConfig:
    kind: typing.Literal["mlp", "graph"] = "mlp"   # an MLP over the latent vector, or a graph network over the atoms
    hidden: int = 128                      # width (graph: of each atom's state)
    layers: int = 2                        # hidden layers (graph: message layers)
    lipschitz: float = 0.9
    step_conditioned: bool = False         # v(z; t, d): K steps of size 1/K from one model (train.steps)
    rbf: int = 0                           # graph: radial basis functions of the distances gating far edges (0: none)
    r_max: float = 0.8                     # graph: range of those basis functions, nm

    def __post_init__(self):
        check_ranges(self, "map", {"hidden": ">=1", "layers": ">=1", "lipschitz": ">0", "rbf": ">=0", "r_max": ">0"})
        if self.kind == "mlp" and self.rbf:
            raise ConfigError("map.rbf: distance gates belong to the graph network (map.kind: graph)")
        if not self.lipschitz < 1:
            raise ConfigError(f"map.lipschitz = {self.lipschitz}: must be below 1 for the step to be a bijection")


@dataclasses.dataclass(frozen=True)
class ICTrainConfig:
    iterations: int = 2000                 # 0: the base alone
    loss: typing.Literal["kl", "ess", "kl+ess"] = "kl"     # reverse KL, -log batch ESS, or KL + ess_weight x ESS loss
    ess_weight: float = 1.0
    batch: int = 128
    lr: float = 3.0e-3
    grad_clip: float = 10.0
    energy_cap: float = 1.0e4
    checkpoint_every: int = 100
    eval_every: int = 500
    eval_samples: int = 4000
    steps: tuple[int, ...] = (1,)          # K of the loss, one drawn per iteration (K > 1: a step-conditioned map)
    self_consistency: float = 0.0          # weight of one 2d step = two d steps (needs some K >= 2 in steps)
    flow_matching: float = 0.0             # weight of flow matching base -> data frames (step-conditioned map)
    max_likelihood: float = 0.0            # weight of the one-step map's negative log-likelihood of the data frames
    energy_weight: float = 1.0             # weight of `loss` (0: flow matching / self-consistency alone)

    def __post_init__(self):
        check_ranges(self, "train", {"iterations": ">=0", "ess_weight": ">=0", "batch": ">=1", "lr": ">0", "grad_clip": ">0",
                                     "energy_cap": ">0", "checkpoint_every": ">=1", "eval_every": ">=1",
                                     "eval_samples": ">=1", "self_consistency": ">=0", "flow_matching": ">=0",
                                     "max_likelihood": ">=0", "energy_weight": ">=0"})
        if not (self.energy_weight or self.flow_matching or self.self_consistency or self.max_likelihood) \
                and self.iterations:
            raise ConfigError("train: energy_weight, flow_matching, max_likelihood and self_consistency are all 0: "
                              "nothing to train")
        if not self.steps or min(self.steps) < 1:
            raise ConfigError(f"train.steps: give one or more step counts K >= 1, got {list(self.steps)}")
        if self.self_consistency > 0 and max(self.steps) < 2:
            raise ConfigError("train.self_consistency > 0 needs a step count K >= 2 in train.steps")


@dataclasses.dataclass(frozen=True)
class ICExperimentConfig:
    route: typing.Literal["internal"]
    target: str
    data: ICDataConfig
    seed: int = 0
    base: ICBaseConfig = ICBaseConfig()
    map: ICMapConfig = ICMapConfig()
    train: ICTrainConfig = ICTrainConfig()

    @classmethod
    def load(cls, path, overrides: typing.Sequence[str] = ()) -> "ICExperimentConfig":
        """Read a config YAML with ``section.key=value`` overrides (as :meth:`ExperimentConfig.load`)."""
        return from_dict(cls, apply_overrides(load_yaml(path), overrides), str(path))

    def __post_init__(self):
        if self.base.state_mixture > 0 and self.train.iterations > 0:
            raise ConfigError("base.state_mixture: a mixture of bases has no single latent space for the one-step "
                              "map to act on; it is sampled alone (set train.iterations: 0)")
        if max(self.train.steps) > 1 and not self.map.step_conditioned:
            raise ConfigError(f"train.steps {list(self.train.steps)}: K > 1 needs a step-conditioned map "
                              "(map.step_conditioned: true)")
        if self.train.flow_matching > 0 and not self.map.step_conditioned:
            raise ConfigError("train.flow_matching > 0 trains a time-dependent velocity: it needs "
                              "map.step_conditioned: true")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_internal_config(path) -> bool:
    """Whether a config file selects the internal-coordinate route (``route: internal``)."""
    return load_yaml(path).get("route") == "internal"
