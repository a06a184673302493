"""A one-step map on the structured base's latent space R^m x T^k that is a bijection by construction.

The base (:class:`~molsample.coords.base.StructuredBase`) draws soft torsions s on the torus and
standard-normal eps; its internal coordinates are y = join(s, mu(s) + L eps). The one-step map acts
on z = (s, eps):

    z' = z + v(z),   torsion components wrapped to [-pi, pi),

with v seen through the features (cos s, sin s, eps), so v is periodic in s and the step is a map of
R^m x T^k homotopic to the identity. Every weight matrix of v is divided by its exact spectral norm
(when above 1), the activations are 1-Lipschitz, and the output is scaled by lipschitz * tanh(gate):
v is Lipschitz with constant below ``lipschitz`` < 1, so I + dv/dz is nonsingular everywhere and the
step is a diffeomorphism (on R^m by Banach's fixed-point theorem; on the torus part a local
diffeomorphism homotopic to the identity). gate = 0 at initialisation: the map starts at the
identity, i.e. at the base. The exact log|det(I + dv/dz)| is computed from the full Jacobian.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import StructuredBase
from .target import InternalCoordinateTarget, wrap


class ResidualMap(nn.Module):
    """What every one-step map on z = (s, eps) shares: spectrally normalised ``weights``, a ``gate``
    (0: the identity), the wrapped step and the exact log-det from its :meth:`jacobian`. Subclasses set
    k, m, lipschitz, step_conditioned and define ``velocity`` and ``jacobian``."""

    def is_identity(self) -> bool:
        """True when the gate is exactly 0: the step is z' = z, det 1 (a base alone, or a map before training)."""
        return bool(self.gate.detach() == 0)

    def normalised(self) -> list[torch.Tensor]:
        """Each weight divided by max(1, its exact spectral norm): every layer 1-Lipschitz."""
        return [w / torch.clamp(torch.linalg.matrix_norm(w, ord=2), min=1.0) for w in self.weights]

    def step(self, z: torch.Tensor, weights: list[torch.Tensor] | None = None, t: float = 0.0,
             d: float = 1.0) -> torch.Tensor:
        """z' = z + d v(z; t, d), torsions wrapped (d <= 1 keeps the step a bijection)."""
        weights = self.normalised() if weights is None else weights
        out = z + d * self.velocity(z, weights, t, d)
        return torch.cat([wrap(out[..., : self.k]), out[..., self.k:]], dim=-1)

    # rows per Jacobian: a (B, D, D) block of thousands of rows outgrows what the allocator keeps (fresh pages on
    # every call); 256 rows at a time cut the CPU of 20,000 aldp draws by a quarter, the same values
    log_det_chunk = 256

    def log_det(self, z: torch.Tensor, weights: list[torch.Tensor] | None = None, t: float = 0.0,
                d: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(log|det(I + d dv/dz)| (B,), sign of det (B,)) from the full (k + m) x (k + m) Jacobian, in blocks
        of :attr:`log_det_chunk` rows."""
        weights = self.normalised() if weights is None else weights
        eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
        n = self.log_det_chunk
        parts = [torch.linalg.slogdet(eye + self.jacobian(z[i:i + n], weights, _rows(t, i, n), _rows(d, i, n)))
                 for i in range(0, len(z), n)]
        return torch.cat([p[1] for p in parts]), torch.cat([p[0] for p in parts])


class LipschitzResidualMap(ResidualMap):
    """v : (B, k + m) -> (B, k + m) on z = (s, eps), Lipschitz below ``lipschitz``.

    Parameters
    ----------
    n_torsions, n_linear : int
        k soft torsions (first k components of z) and m linear components.
    hidden, layers : int
        Width and number of hidden layers of the MLP.
    lipschitz : float in (0, 1)
    """

    def __init__(self, n_torsions: int, n_linear: int, hidden: int = 128, layers: int = 2, lipschitz: float = 0.9,
                 generator: torch.Generator | None = None, step_conditioned: bool = False):
        super().__init__()
        if not 0 < lipschitz < 1:
            raise ValueError(f"lipschitz = {lipschitz}: must lie in (0, 1) for the step to be a bijection")
        self.k, self.m, self.lipschitz = n_torsions, n_linear, lipschitz
        # a step-conditioned drift v(z, t, d) also sees the step's start time t and size d (two more inputs;
        # they do not enter dv/dz, so the Lipschitz bound in z is unchanged)
        self.step_conditioned = step_conditioned
        n_in = 2 * n_torsions + n_linear + (2 if step_conditioned else 0)
        sizes = [n_in] + [hidden] * layers + [n_torsions + n_linear]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            w = torch.randn(b, a, generator=generator, dtype=torch.float64) / math.sqrt(a)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(b, dtype=torch.float64)))
        self.gate = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def _features(self, z: torch.Tensor, t: float, d: float) -> torch.Tensor:
        s, eps = z[..., : self.k], z[..., self.k:]
        parts = [torch.cos(s), torch.sin(s), eps]
        if self.step_conditioned:           # t and d: numbers, or one per sample (B,)
            shape = z.shape[:-1]
            parts += [torch.as_tensor(v, dtype=z.dtype, device=z.device).expand(shape)[..., None] for v in (t, d)]
        return torch.cat(parts, dim=-1)

    def velocity(self, z: torch.Tensor, weights: list[torch.Tensor], t: float = 0.0, d: float = 1.0) -> torch.Tensor:
        """v(z; t, d) for z (..., k + m) with pre-normalised weights (vmap-friendly); t and d are seen only
        by a step-conditioned map."""
        h = self._features(z, t, d)
        for i, (w, b) in enumerate(zip(weights, self.biases)):
            h = h @ w.T + b
            if i < len(weights) - 1:
                h = torch.tanh(h)
        return self.lipschitz * torch.tanh(self.gate) * h

    def jacobian(self, z: torch.Tensor, weights: list[torch.Tensor] | None = None, t: float = 0.0,
                 d: float = 1.0) -> torch.Tensor:
        """d(d v)/dz (B, D, D), D = k + m, by the chain rule through the layers in closed form: the
        features' Jacobian (-sin s, cos s on the torsions, I on eps) times each weight matrix and
        each tanh' in turn (one batched matrix product per layer, no per-column passes)."""
        weights = self.normalised() if weights is None else weights
        k, m = self.k, self.m
        s = z[..., :k]
        h = self._features(z, t, d)
        w0 = weights[0]
        n = z.shape[0]
        # the transposed Jacobian (B, D, width), so that every layer is one large matrix product;
        # first layer: (d feat / dz)^T W^T without forming the sparse feature Jacobian
        jt = torch.cat([(-torch.sin(s))[:, :, None] * w0[:, :k].T + torch.cos(s)[:, :, None] * w0[:, k:2 * k].T,
                        w0[:, 2 * k:2 * k + m].T.expand(n, -1, -1)], dim=1)
        h = h @ w0.T + self.biases[0]
        for w, b in zip(weights[1:], self.biases[1:]):
            a = torch.tanh(h)
            jt = (jt * (1 - a ** 2)[:, None, :]).reshape(-1, jt.shape[-1]) @ w.T
            jt = jt.reshape(n, -1, w.shape[0])
            h = a @ w.T + b
        jac = jt.transpose(1, 2)
        return d * self.lipschitz * torch.tanh(self.gate) * jac


class OneStepSampler:
    """Base draw -> one Lipschitz residual step -> internal coordinates -> conformation, with exact
    log densities and importance weights against an :class:`InternalCoordinateTarget`."""

    def __init__(self, base: StructuredBase, target: InternalCoordinateTarget, flow: LipschitzResidualMap):
        self.base, self.target, self.flow = base, target, flow

    def latent(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n base draws z = (s, eps) and log p(z) (no log det L)."""
        return self.base.sample_latent(n, generator)

    def run(self, z0: torch.Tensor, weights=None, steps: int = 1, with_log_det: bool = True):
        """z0 -> z_K by K = ``steps`` steps of size 1/K (a step-conditioned map; K = 1 for any map), with the
        summed log|det| and the product of the steps' det signs (> 0 only if every step's det is)."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"{steps} steps: give a whole number of steps K >= 1")
        if steps != 1 and not self.flow.step_conditioned:
            raise ValueError(f"{steps} steps: this map is not step-conditioned (map.step_conditioned: false), so "
                             "only its one step is defined")
        n = z0.shape[0]
        log_det, sign = torch.zeros(n, dtype=z0.dtype), torch.ones(n, dtype=z0.dtype)
        if not torch.is_grad_enabled() and self.flow.is_identity():
            # the gate is 0: every step is exactly the identity (no network pass, no Jacobian); with
            # gradients on, the pass is kept, since the gate's gradient goes through it
            return z0, log_det, sign
        weights = self.flow.normalised() if weights is None else weights
        z, d = z0, 1.0 / steps
        for i in range(steps):
            t = i * d
            if with_log_det:
                ld, sg = self.flow.log_det(z, weights, t, d)
                log_det = log_det + ld
                sign = torch.where((sign > 0) & (sg > 0), sign, -torch.ones_like(sign))
            z = self.flow.step(z, weights, t, d)
        return z, log_det, sign

    def draw(self, n: int, generator: torch.Generator, weights=None, with_log_det: bool = True, steps: int = 1,
             latent: tuple[torch.Tensor, torch.Tensor] | None = None):
        """n samples: dict with y, log_q (of y), log_w, sign (of the map's det), and z0, z1. ``latent``:
        given base draws (z0, log p(z0)) instead of n fresh ones."""
        z0, log_p = self.latent(n, generator) if latent is None else latent
        z1, log_det, sign = self.run(z0, weights, steps, with_log_det)
        y, ok = self.base.from_latent(z1)
        log_q = log_p - log_det - self.base.log_det_chol
        log_q = torch.where(ok & (sign > 0), log_q, torch.full_like(log_q, -math.inf))
        return {"z0": z0, "z1": z1, "y": y, "log_q": log_q, "sign": sign}

    def log_weights(self, sample: dict) -> torch.Tensor:
        return self.target.log_weights(sample["y"], sample["log_q"])

    def objective(self, kind: str, n: int, generator: torch.Generator, energy_cap: float = 1e4,
                  mix: float = 0.0, steps: int = 1) -> tuple[torch.Tensor, dict]:
        """The training loss of the one-step map on n base draws: ``kl`` (reverse KL), ``ess`` (minus the
        log of the batch's Kish ESS, log E[w^2] - 2 log E[w], the chi^2 divergence's log: it weighs the
        tails that set the ESS of a large sample, which the mode-seeking reverse KL neglects), or
        ``kl+ess`` (reverse KL plus ``mix`` times the ESS loss), of the K = ``steps`` map. Draws outside the
        domain are left out."""
        if kind == "kl":
            return self.reverse_kl(n, generator, energy_cap, steps)
        d = self.draw(n, generator, steps=steps)
        u = self.target.energy(d["y"])
        ok = torch.isfinite(u) & torch.isfinite(d["log_q"])
        lw = (-u - d["log_q"])[ok]
        chi = torch.logsumexp(2 * lw, 0) - 2 * torch.logsumexp(lw, 0) + math.log(max(int(ok.sum()), 1))
        loss = chi if kind == "ess" else (_capped(u, energy_cap) + d["log_q"])[ok].mean() + mix * chi
        with torch.no_grad():
            kish = float(torch.exp(-chi)) * int(ok.sum()) / n
        return loss, {"loss": float(loss.detach()), "batch_ess": kish, "left_out": int((~ok).sum()),
                      "gate": float(torch.tanh(self.flow.gate.detach()))}

    def self_consistency(self, n: int, generator: torch.Generator, steps: tuple[int, ...]) -> tuple[torch.Tensor, dict]:
        """One step of size 2d must land where two steps of size d do (the second held fixed, no gradient),
        from the state the K-step map reaches at time t: K drawn from ``steps`` (K >= 2, d = 1/K), t = i d
        with i uniform in 0 .. K - 2. Torsion differences are taken on the circle. Returns (loss, logs)."""
        fine = [k for k in steps if k >= 2]
        k = fine[int(torch.randint(len(fine), (1,), generator=generator))]
        i = int(torch.randint(k - 1, (1,), generator=generator))
        d = 1.0 / k
        z, _ = self.latent(n, generator)
        weights = self.flow.normalised()
        with torch.no_grad():
            for j in range(i):
                z = self.flow.step(z, weights, j * d, d)
            target = self.flow.step(self.flow.step(z, weights, i * d, d), weights, (i + 1) * d, d)
        big = self.flow.step(z, weights, i * d, 2 * d)
        loss = (_wrapped(big - target, self.flow.k) ** 2).sum(1).mean()
        return loss, {"sc_loss": float(loss.detach()), "sc_steps": k}

    def flow_matching(self, z1: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Flow matching from the base to data: latent data points z1 (B, k + m) paired with B fresh base draws
        z0, t uniform in [0, 1), the geodesic interpolant on the torus (s_t = s0 + t wrap(s1 - s0), wrapped) and
        the straight line on eps; the map's instantaneous velocity v(z_t; t, d = 0) is fitted to the
        interpolant's, (wrap(s1 - s0), eps1 - eps0). Needs a step-conditioned map. Returns (loss, logs)."""
        if not self.flow.step_conditioned:
            raise ValueError("flow matching trains a time-dependent velocity: it needs map.step_conditioned: true")
        k = self.flow.k
        n = z1.shape[0]
        z0, _ = self.latent(n, generator)
        t = torch.rand(n, generator=generator, dtype=z0.dtype)
        ds = wrap(z1[:, :k] - z0[:, :k])
        u = torch.cat([ds, z1[:, k:] - z0[:, k:]], dim=1)
        zt = torch.cat([wrap(z0[:, :k] + t[:, None] * ds), z0[:, k:] + t[:, None] * u[:, k:]], dim=1)
        v = self.flow.velocity(zt, self.flow.normalised(), t, torch.zeros_like(t))
        loss = ((v - u) ** 2).sum(1).mean()
        return loss, {"fm_loss": float(loss.detach())}

    def inverse(self, z1: torch.Tensor, weights=None, tol: float = 1e-12, max_iterations: int = 500):
        """z0 with z0 + v(z0) = z1 (torsions on the circle), by the fixed point z0 <- z1 - v(z0): a contraction
        for a map whose drift is Lipschitz below 1. Returns (z0, largest residual); no gradient."""
        weights = self.flow.normalised() if weights is None else weights
        k = self.flow.k
        with torch.no_grad():
            w = [x.detach() for x in weights]
            z0 = z1.clone()
            for _ in range(max_iterations):
                new = _wrapped(z1 - self.flow.velocity(z0, w), k)
                change = _wrapped(new - z0, k).abs().max()
                z0 = new
                if change < tol:
                    break
            residual = _wrapped(self.flow.step(z0, w) - z1, k).abs().max()
        return z0, float(residual)

    def max_likelihood(self, z1: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Maximum likelihood of the one-step map on data points z1 (B, k + m) in the latent space: minus the mean
        of log q(z1) = log p(z0) - log|det(I + dv/dz)(z0)|, z0 the map's inverse of z1. The gradient through the
        inverse is the implicit one, dz0/dtheta = -(I + dv/dz)^-1 dv/dtheta: z0 enters as
        z0 - (I + J)^-1 r(theta), r = z0 + v_theta(z0) - z1, which is z0 in value and carries that derivative.
        The forward KL from the data is mass-covering, where the energy objectives are mode-seeking. Returns
        (loss, logs)."""
        weights = self.flow.normalised()
        k = self.flow.k
        z0, residual = self.inverse(z1, weights)
        with torch.no_grad():
            a = torch.eye(z0.shape[1], dtype=z0.dtype, device=z0.device) + self.flow.jacobian(z0, weights)
        r = _wrapped(z0 + self.flow.velocity(z0, weights) - z1, k)
        z0 = z0 - torch.linalg.solve(a, r[..., None])[..., 0]
        log_det, _ = self.flow.log_det(z0, weights)
        nll = -(self.base.latent_log_prob(z0) - log_det).mean()
        return nll, {"ml_nll": float(nll.detach()), "ml_inverse_residual": residual,
                     "gate": float(torch.tanh(self.flow.gate.detach()))}

    def reverse_kl(self, n: int, generator: torch.Generator, energy_cap: float = 1e4,
                   steps: int = 1, latent: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        """The one-step map's reverse KL up to a constant, mean of u_y(y) + log q(y) over n base draws
        (energies above ``energy_cap`` kT enter as cap + log(1 + u - cap); draws outside the domain
        are left out and counted), or over the given ``latent`` draws. Returns (loss, logs)."""
        d = self.draw(n, generator, steps=steps, latent=latent)
        u = self.target.energy(d["y"])
        ok = torch.isfinite(u) & torch.isfinite(d["log_q"])
        loss = (_capped(u, energy_cap) + d["log_q"])[ok].mean()
        with torch.no_grad():
            lw = torch.where(ok, -u - d["log_q"], torch.full_like(u, -math.inf))
            w = torch.exp(lw - lw.max())
            kish = float(w.sum() ** 2 / (w ** 2).sum() / n)
        return loss, {"loss": float(loss.detach()), "batch_ess": kish, "left_out": int((~ok).sum()),
                      "gate": float(torch.tanh(self.flow.gate.detach()))}


def _wrapped(d: torch.Tensor, k: int) -> torch.Tensor:
    """A latent difference with its first k (torsion) components taken on the circle."""
    return torch.cat([wrap(d[:, :k]), d[:, k:]], dim=1)


def _capped(u: torch.Tensor, cap: float) -> torch.Tensor:
    """Energies above ``cap`` enter as cap + log(1 + u - cap): the loss stays finite and keeps a gradient."""
    return torch.where(u > cap, cap + torch.log1p(torch.clamp(u - cap, min=0)), u)


def _rows(v, start: int, count: int):
    """A number as it is; a per-sample tensor (B,) cut to its rows [start, start + count)."""
    if isinstance(v, torch.Tensor) and v.dim():
        return v[start:start + count]
    return v
