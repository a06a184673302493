"""The internal-coordinate sampler of a bonded molecule as a trainable, saveable model.

A model is the structured base (:class:`~molsample.coords.base.StructuredBase`, fitted to reference
frames in seconds) and the one-step map on its latent space
(:class:`~molsample.coords.flow.LipschitzResidualMap`, an MLP over the latent vector, or
:class:`~molsample.coords.graph.GraphResidualMap`, a graph network over the atoms; both start at the identity),
trained by the map's reverse KL against the force field with the exact log-det. One network
evaluation per sample; exact importance weights against exp(-u) in the canonical frame.

    route: internal            # the config's first key selects this route in `molsample train`
    target: aldp
    data: {paths: [systems/aldp/reference/aldp_umbrella_2d_30x18.npz], weight_power: 0.5}
    base: {stiff_below: 0.35, ...}
    map: {hidden: 128, layers: 2, lipschitz: 0.9}
    train: {iterations: 2000, batch: 128, lr: 3.0e-3, ...}

Checkpoints hold tensors, numbers, strings and lists only (loaded with weights_only=True).
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from ..schema import from_dict
from .config import ICBaseConfig, ICDataConfig, ICExperimentConfig, ICMapConfig, ICTrainConfig, is_internal_config

__all__ = ["ICBaseConfig", "ICDataConfig", "ICExperimentConfig", "ICMapConfig", "ICTrainConfig", "InternalSampler",
           "base_from_state", "base_state", "build_sampler", "is_internal_checkpoint", "is_internal_config",
           "load_internal_checkpoint", "refine_base", "training_frames"]
from ..io import INTERNAL_FORMAT as FORMAT
from .base import StateMixtureBase, StructuredBase, TorusHistogram
from .flow import LipschitzResidualMap, OneStepSampler
from .graph import GraphResidualMap
from .target import InternalCoordinateTarget
from .transform import InternalCoordinates

CHECKPOINT = "checkpoint.pt"


# ------------------------------------------------------------------------------------------ model

def base_state(base) -> dict:
    """The fitted base (a StructuredBase or a StateMixtureBase) as tensors and lists (for a weights_only
    checkpoint)."""
    if isinstance(base, StateMixtureBase):
        return {"mixture": [base_state(c) for c in base.components], "log_pi": base.log_pi.clone(),
                "names": list(base.names)}
    return {"lead": base.lead.clone(), "soft": base.soft.clone(), "centre": base.centre.clone(),
            "groups": [list(map(int, g)) for g in base.groups],
            "histograms": [{"prob": torch.as_tensor(h.prob), "bins": int(h.bins)} for h in base.histograms],
            "coef": base.coef.clone(), "chol": base.chol.clone(), "order": int(base.order),
            "pairs": [list(map(int, p)) for p in base.pairs]}


def base_from_state(ic: InternalCoordinates, s: dict):
    if "mixture" in s:
        return StateMixtureBase([base_from_state(ic, c) for c in s["mixture"]], s["log_pi"].numpy(),
                                [str(n) for n in s["names"]])
    hists = [TorusHistogram(h["prob"].numpy(), int(h["bins"])) for h in s["histograms"]]
    return StructuredBase(ic, s["lead"].numpy(), s["soft"].numpy(), s["centre"].numpy(),
                          [tuple(g) for g in s["groups"]], hists, s["coef"].numpy(), s["chol"].numpy(),
                          int(s["order"]), [tuple(p) for p in s["pairs"]])


class InternalSampler:
    """Base + one-step map + the molecule's target: draws Cartesian conformations with exact weights."""

    def __init__(self, cartesian, base: StructuredBase, flow: LipschitzResidualMap):
        self.cartesian, self.base, self.flow = cartesian, base, flow
        self.refine_log: list[dict] = []          # per refit of the base (build_sampler), if any
        self.target = InternalCoordinateTarget(cartesian, ic=base.ic)
        self.one_step = OneStepSampler(base, self.target, flow)

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator, chunk: int = 4096, weights: bool = True,
             progress=None, steps: int = 1) -> dict:
        """n conformations: x (n, N, 3) nm float64 in the canonical frame, log_q (density of the
        internal coordinates), log_w (exact importance weights; -inf outside the domain or where
        the step's det <= 0), the sign of each step's det, and the count of draws outside the domain."""
        xs, lqs, lws, signs, ood = [], [], [], [], 0
        wts = self.flow.normalised()
        mixture = isinstance(self.base, StateMixtureBase)
        if mixture and (steps != 1 or not self.flow.is_identity()):
            raise ValueError("a mixture base is sampled alone: its map must stay at the identity, with one step")
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            if mixture:                      # the base alone: y and its exact mixture density, no map
                y, log_q = self.base.sample(m, generator)
                d = {"y": y, "log_q": log_q, "sign": torch.ones(m, dtype=torch.float64)}
            else:
                d = self.one_step.draw(m, generator, wts, with_log_det=True, steps=steps)
            if weights:
                lw, x = self.target.log_weights_and_positions(d["y"], d["log_q"])
                lws.append(lw)
            else:
                x, _ = self.target.to_cartesian(d["y"])
            ood += self.target.out_of_domain(d["y"])
            xs.append(x)
            lqs.append(d["log_q"])
            signs.append(d["sign"])
            if progress is not None:
                progress.update(m)
        out = {"x": torch.cat(xs), "log_q": torch.cat(lqs), "sign": torch.cat(signs), "out_of_domain": ood}
        if weights:
            out["log_w"] = torch.cat(lws)
        return out

    def state(self) -> dict:
        zm = self.base.ic.zmatrix
        return {"base": base_state(self.base), "flow": {k: v.detach().clone() for k, v in self.flow.state_dict().items()},
                "zmatrix_order": torch.as_tensor(np.asarray(zm.order))}


def build_sampler(cfg: ICExperimentConfig, generator: torch.Generator | None = None, base_state_dict=None,
                  progress: bool = False):
    """The sampler of a config: the base fitted to the config's frames (or restored), the map at the identity."""
    from ..targets import load_target
    cart = load_target(cfg.target)
    if not cart.molecular:
        raise ValueError(f"system {cfg.target!r} has no bond graph; the internal-coordinate route is for molecules "
                         "(use the Cartesian route for particle systems)")
    ic = InternalCoordinates(cart.topology)
    refine_log = []
    if base_state_dict is None:
        x, log_w = training_frames(cfg.data, cart)
        base = StructuredBase.fit(ic, x, log_w, cart.topology, **cfg.base.fit_kwargs())
        if cfg.base.refine_rounds:
            base, refine_log = refine_base(base, InternalCoordinateTarget(cart, ic=ic), cfg.base,
                                           torch.Generator().manual_seed(cfg.seed + 2), progress=progress)
        if cfg.base.state_mixture > 0:
            base = StateMixtureBase.fit(base, x, log_w, cart.topology, cfg.base.state_mixture, cfg.base.state_power,
                                        **cfg.base.fit_kwargs())
    else:
        base = base_from_state(ic, base_state_dict)
    mc = cfg.map
    fb = base.components[0] if isinstance(base, StateMixtureBase) else base   # a mixture's map stays the identity
    if mc.kind == "graph":
        flow = GraphResidualMap(cart, fb, hidden=mc.hidden, layers=mc.layers, lipschitz=mc.lipschitz, rbf=mc.rbf,
                                r_max=mc.r_max, generator=generator, step_conditioned=mc.step_conditioned)
    else:
        flow = LipschitzResidualMap(len(fb.soft), fb.n_linear, hidden=mc.hidden, layers=mc.layers,
                                    lipschitz=mc.lipschitz, generator=generator, step_conditioned=mc.step_conditioned)
    sampler = InternalSampler(cart, base, flow)
    sampler.refine_log = refine_log
    return sampler


def refine_base(base: StructuredBase, target: InternalCoordinateTarget, bc: ICBaseConfig, generator: torch.Generator,
                chunk: int = 20000, progress: bool = False) -> tuple[StructuredBase, list[dict]]:
    """Refit the base ``bc.refine_rounds`` times to its own draws weighted by their exact importance
    weights exp(-u(x)) / q(x) (iterated importance sampling, the cross-entropy method): each refit
    moves the base's histograms, conditional means and covariance from the reference frames' ensemble
    to the force field's own Boltzmann distribution, with as many draws as ``bc.refine_samples``
    (the frames are only the start). Where the draws' ESS is below ``bc.refine_min_ess`` the refit is to
    w^beta (a tempered step towards the target, beta the largest that keeps that ESS), so that a poor
    start (a large molecule, few frames) moves by steps the weighted draws can support. Draws outside the
    domain have weight 0. A refit can also lose ESS (a few heavy weights move it), so after the last one the
    base is drawn once more and the base whose draws had the largest Kish ESS is returned (every weight stays
    exact whichever base is kept). Returns that base and, per round, the Kish ESS of the draws it was refitted
    to (that of the base before the refit; the last entry measures the last refit and says which was kept)."""
    from ..estimate import ess

    def weighted_draws():
        xs, lws = [], []
        with torch.no_grad():
            for start in range(0, bc.refine_samples, chunk):
                y, log_q = base.sample(min(chunk, bc.refine_samples - start), generator)
                lw, x = target.log_weights_and_positions(y, log_q)
                keep = torch.isfinite(lw) & torch.isfinite(x).reshape(len(x), -1).all(1)
                xs.append(x[keep].numpy())
                lws.append(lw[keep].numpy())
        lw = np.concatenate(lws)
        n_zero = bc.refine_samples - len(lw)
        return np.concatenate(xs), lw, n_zero, ess(np.concatenate([lw, np.full(n_zero, -np.inf)]), n_boot=0).value

    log, best = [], (-1.0, None, 0)
    for r in range(bc.refine_rounds + 1):
        x, lw, n_zero, kish = weighted_draws()
        if kish > best[0]:
            best = (kish, base, r)
        if r == bc.refine_rounds:                       # the last refit's own ESS, measured on fresh draws
            log.append({"round": r + 1, "draws": bc.refine_samples, "zero_weight": int(n_zero), "ess_before": kish,
                        "beta": None})
            break
        if len(lw) == 0:
            raise ValueError("refining the base: every draw has zero weight (no draw inside the domain); "
                             "check the reference frames")
        beta = 1.0 if kish >= bc.refine_min_ess else _tempering_exponent(lw, n_zero, bc.refine_min_ess)
        log.append({"round": r + 1, "draws": bc.refine_samples, "zero_weight": int(n_zero), "ess_before": kish,
                    "beta": beta})
        if progress:
            print(f"refine base: round {r + 1}/{bc.refine_rounds}, Kish ESS of its draws {kish:.3f}, refitted to "
                  f"w^{beta:.3g}", file=sys.stderr, flush=True)
        base = StructuredBase.fit(base.ic, x, beta * lw, target.cartesian.topology, **bc.fit_kwargs())
    if progress:
        print(f"refine base: the last refit's draws have Kish ESS {log[-1]['ess_before']:.3f}; kept the base of "
              f"round {best[2]} (ESS {best[0]:.3f}; round 0 is the unrefined base)", file=sys.stderr, flush=True)
    log[-1]["kept_round"] = best[2]
    return best[1], log


def _tempering_exponent(lw: np.ndarray, n_zero: int, min_ess: float, steps: int = 40) -> float:
    """The largest beta in (0, 1] whose weights w^beta have a Kish ESS of at least ``min_ess`` (bisection;
    the ESS of w^beta falls as beta grows). Draws with zero weight count as zero at every beta > 0."""
    from ..estimate import ess
    zero = np.full(n_zero, -np.inf)
    # as beta -> 0 the ESS tends to the share of draws in the domain; never ask for more than that
    min_ess = min(min_ess, 0.99 * len(lw) / (len(lw) + n_zero))
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if ess(np.concatenate([mid * lw, zero]), n_boot=0).value >= min_ess:
            lo = mid
        else:
            hi = mid
    return max(lo, 1e-6)


def training_frames(dc: ICDataConfig, target) -> tuple[np.ndarray, np.ndarray]:
    """Frames of every data file with log weights: w^power within each file, normalised, times its share."""
    from ..data import load_frames
    shares = dc.shares or tuple(1.0 for _ in dc.paths)
    xs, lws = [], []
    for path, share in zip(dc.paths, shares):
        x, lw = load_frames(path, target)
        lw = dc.weight_power * lw
        xs.append(x)
        lws.append(lw - np.logaddexp.reduce(lw) + math.log(share / sum(shares)))
    return np.concatenate(xs), np.concatenate(lws)


def load_internal_checkpoint(path, ckpt: dict | None = None) -> tuple[InternalSampler, dict]:
    """(sampler, checkpoint dict) of an internal-coordinate checkpoint (weights_only load)."""
    from ..io import InputError, read_checkpoint
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise InputError(f"{path}: not an internal-coordinate checkpoint (format {ckpt.get('format')!r})")
    cfg = from_dict(ICExperimentConfig, ckpt["config"], f"{path}: config")
    sampler = build_sampler(cfg, base_state_dict=ckpt["model"]["base"])
    if not torch.equal(torch.as_tensor(np.asarray(sampler.base.ic.zmatrix.order)), ckpt["model"]["zmatrix_order"]):
        raise InputError(f"{path}: the system {cfg.target!r} now gives another Z-matrix than the checkpoint's; "
                         "it was trained for a different topology")
    sampler.flow.load_state_dict(ckpt["model"]["flow"])
    return sampler, ckpt


def is_internal_checkpoint(ckpt: dict) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT
