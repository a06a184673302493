"""A base distribution built from the molecule: exact densities on internal coordinates.

The internal coordinates y (bonds, angles, torsions) are rearranged by an exact, volume-preserving
bijection into soft torsions s (on the torus) and near-linear coordinates h (in R^m):

- torsions about the same bond move together: the first (in placement order) leads, every other
  one becomes its offset from the lead, wrap(phi_j - phi_lead) (a shear of the torus, |det| = 1);
- a lead or offset whose circular spread over reference frames is below ``stiff_below`` radians
  (peptide bonds, impropers, the torsion that fixes a stereocentre, a methyl group's 120-degree
  offsets) is unwrapped about its circular mean and joins the bonds and angles in h.

Then p(y) = p(s) p(h | s):

- p(s): a smoothed histogram on the torus, joint for the (phi, psi) pair of each residue and one
  per remaining soft torsion, mixed with a uniform floor so that every state is proposed;
- p(h | s) = N(h; B f(s), L L^T): means that follow the soft torsions through Fourier features
  f(s), fitted by weighted least squares, and the full covariance of the residuals; or (``local``)
  the same Gaussian built as a sparse network along the bond graph: each near-linear coordinate
  h_i = b_i . f_i(s) + sum_j a_ij h_j + sigma_i eps_i, regressed only on the soft torsions about
  bonds near it (f_i) and on the earlier coordinates near it (j < i), so that the number of fitted
  numbers grows with the molecule's size rather than with its square. It is the Gaussian with mean
  (I - A)^-1 B^T f(s) and Cholesky factor (I - A)^-1 diag(sigma), so both fits share one form.

Sampling and log_prob are exact (piecewise-constant histogram densities, a Gaussian with a constant
Jacobian). A sample whose bond, angle or unwrapped torsion falls outside its domain has zero target
density: the target gives it weight 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .target import wrap
from .transform import InternalCoordinates


def circular_spread(theta: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted circular mean and circular standard deviation sqrt(-2 ln R) per column of theta (M, k)."""
    c = w @ np.exp(1j * theta)
    r = np.clip(np.abs(c), 1e-300, 1.0)
    return np.angle(c), np.sqrt(-2.0 * np.log(r))


@dataclass
class TorusHistogram:
    """A piecewise-constant density on T^d (d = 1 or 2) with ``bins`` bins per angle on [-pi, pi)."""
    prob: np.ndarray            # (bins,) * d, sums to 1
    bins: int

    @classmethod
    def fit(cls, theta: np.ndarray, w: np.ndarray, bins: int, smooth_bins: float, floor: float) -> "TorusHistogram":
        """Weighted histogram of theta (M, d), smoothed by a periodic Gaussian of ``smooth_bins``
        bins, mixed with the uniform density at weight ``floor``."""
        d = theta.shape[1]
        idx = np.floor((wrap_np(theta) + math.pi) / (2 * math.pi) * bins).astype(int) % bins
        hist = np.zeros((bins,) * d)
        np.add.at(hist, tuple(idx.T), w)
        if smooth_bins > 0:
            k = np.fft.fftfreq(bins) * bins
            kernel = np.exp(-0.5 * (2 * math.pi * k / bins * smooth_bins) ** 2)
            for axis in range(d):
                shape = [1] * d
                shape[axis] = bins
                hist = np.real(np.fft.ifft(np.fft.fft(hist, axis=axis) * kernel.reshape(shape), axis=axis))
        hist = np.clip(hist, 0, None)
        hist = hist / hist.sum()
        prob = (1 - floor) * hist + floor / hist.size
        return cls(prob, bins)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, d) float64 angles in [-pi, pi)."""
        d = self.prob.ndim
        flat = torch.as_tensor(self.prob.reshape(-1))
        cell = torch.multinomial(flat, n, replacement=True, generator=generator)
        idx = np.stack(np.unravel_index(cell.numpy(), self.prob.shape), axis=1)
        u = torch.rand(n, d, generator=generator, dtype=torch.float64)
        width = 2 * math.pi / self.bins
        return -math.pi + (torch.as_tensor(idx, dtype=torch.float64) + u) * width

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (B, d) -> (B,) log density (per rad^d)."""
        d = self.prob.ndim
        idx = torch.floor((wrap(theta) + math.pi) / (2 * math.pi) * self.bins).long() % self.bins
        table = torch.as_tensor(np.log(self.prob), dtype=theta.dtype, device=theta.device)
        cell_volume = (2 * math.pi / self.bins) ** d
        return table[tuple(idx.T)] - math.log(cell_volume)


def wrap_np(a: np.ndarray) -> np.ndarray:
    return np.remainder(a + math.pi, 2 * math.pi) - math.pi


def shear_torsions(tors: torch.Tensor, lead: torch.Tensor, sign: int) -> torch.Tensor:
    """Leads unchanged, every other torsion shifted by ``sign`` times its lead's value (wrapped):
    sign -1 gives offsets from the leads, +1 undoes it. A shear of the torus, |det| = 1."""
    lead = lead.to(tors.device)
    is_lead = lead == torch.arange(len(lead), device=tors.device)
    return torch.where(is_lead, tors, wrap(tors + sign * tors[:, lead]))


def plain_proposal(ic: InternalCoordinates, mean: np.ndarray, std: np.ndarray):
    """The baseline proposal: bonds and angles N(mean, std), every torsion Uniform[-pi, pi).
    Returns sample(n, generator) -> (y (n, 3N - 6), log density (n,))."""
    mask = ic.torsion_mask
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)

    def sample(n: int, generator: torch.Generator):
        eps = torch.randn(n, ic.dim, generator=generator, dtype=torch.float64)
        tors = (torch.rand(n, ic.dim, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
        y = torch.where(mask, tors, mean + std * eps)
        log_p = _std_normal_log_prob(eps[:, ~mask]) - torch.log(std[~mask]).sum()
        return y, log_p - int(mask.sum()) * math.log(2 * math.pi)
    return sample


def fourier_features(s: torch.Tensor, pairs: list[tuple[int, int]], order: int) -> torch.Tensor:
    """[1, cos(k s_j), sin(k s_j) (k <= order), and cos/sin(s_a +- s_b) for each pair], (B, F)."""
    cols = [torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)]
    for k in range(1, order + 1):
        cols += [torch.cos(k * s), torch.sin(k * s)]
    for a, b in pairs:
        for combo in (s[:, a] + s[:, b], s[:, a] - s[:, b]):
            cols += [torch.cos(combo)[:, None], torch.sin(combo)[:, None]]
    return torch.cat(cols, dim=1)


class StructuredBase:
    """p(y) = p(s) p(h | s) on the internal coordinates of ``ic`` (see the module docstring).

    Build with :meth:`fit` from reference frames and their log weights.
    """

    def __init__(self, ic: InternalCoordinates, lead: np.ndarray, soft: np.ndarray, centre: np.ndarray,
                 groups: list[tuple[int, ...]], histograms: list[TorusHistogram], coef: np.ndarray,
                 chol: np.ndarray, order: int, pairs: list[tuple[int, int]]):
        self.ic, self.order = ic, order
        self.lead = torch.as_tensor(lead)             # per torsion: index of its group's lead torsion
        nt = ic.zmatrix.n_torsions
        self.soft = torch.as_tensor(soft)             # torsion indices that stay on the torus
        self.stiff = torch.as_tensor(np.setdiff1d(np.arange(nt), soft))
        self.centre = torch.as_tensor(centre)         # circular mean of each (relative) torsion
        self.groups, self.histograms, self.pairs = groups, histograms, pairs
        self.coef = torch.as_tensor(coef)             # (F, m)
        self.chol = torch.as_tensor(chol)             # (m, m) lower
        self.log_det_chol = float(np.log(np.diag(chol)).sum())
        self.n_linear = chol.shape[0]

    # ------------------------------------------------------------------ the rearrangement
    def relative_torsions(self, tors: torch.Tensor) -> torch.Tensor:
        """Torsions (B, n_t) -> leads unchanged, the others as offsets from their lead."""
        return shear_torsions(tors, self.lead, -1)

    def absolute_torsions(self, rel: torch.Tensor) -> torch.Tensor:
        return shear_torsions(rel, self.lead, +1)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal coordinates y (B, 3N - 6) -> (s (B, k), h (B, m))."""
        ic = self.ic
        rel = self.relative_torsions(y[:, ic.torsions])
        c = self.centre.to(y)[self.stiff]
        stiff = c + wrap(rel[:, self.stiff] - c)
        h = torch.cat([y[:, ic.bonds], y[:, ic.angles], stiff], dim=1)
        return rel[:, self.soft], h

    def join(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(s, h) -> internal coordinates y (B, 3N - 6); stiff torsions wrapped back."""
        ic = self.ic
        nb, na = ic.zmatrix.n_bonds, ic.zmatrix.n_angles
        rel = torch.zeros(s.shape[0], ic.zmatrix.n_torsions, dtype=s.dtype, device=s.device)
        rel[:, self.soft] = s
        rel[:, self.stiff] = wrap(h[:, nb + na:])
        return torch.cat([h[:, :nb], h[:, nb:nb + na], self.absolute_torsions(rel)], dim=1)

    def unwrapped_in_window(self, h: torch.Tensor) -> torch.Tensor:
        """(B,) bool: every stiff torsion lies within pi of its centre (else the map is not one-to-one there)."""
        nb, na = self.ic.zmatrix.n_bonds, self.ic.zmatrix.n_angles
        c = self.centre.to(h)[self.stiff]
        dev = h[:, nb + na:] - c
        return ((dev >= -math.pi) & (dev < math.pi)).all(1)

    # ------------------------------------------------------------------ density
    def _soft_log_prob(self, s: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
        for group, hist in zip(self.groups, self.histograms):
            out = out + hist.log_prob(s[:, list(group)])
        return out

    def latent_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of latents z = (s, eps) (B, k + m): the torus histograms times the standard normal (no log det L)."""
        k = len(self.soft)
        return self._soft_log_prob(z[:, :k]) + _std_normal_log_prob(z[:, k:])

    def _mean(self, s: torch.Tensor) -> torch.Tensor:
        return fourier_features(s, self.pairs, self.order) @ self.coef.to(s)

    def sample_latent(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws of the latent z = (s, eps), (n, k + m) float64, and their log density (n,)."""
        s = torch.zeros(n, len(self.soft), dtype=torch.float64)
        for group, hist in zip(self.groups, self.histograms):
            s[:, list(group)] = hist.sample(n, generator)
        eps = torch.randn(n, self.n_linear, generator=generator, dtype=torch.float64)
        return torch.cat([s, eps], dim=1), self._soft_log_prob(s) + _std_normal_log_prob(eps)

    def from_latent(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent z = (s, eps) -> (internal coordinates y, (B,) bool: every stiff torsion within its
        window). The map has the constant log|det| = log det L (:attr:`log_det_chol`)."""
        k = len(self.soft)
        s, eps = z[:, :k], z[:, k:]
        h = self._mean(s) + eps @ self.chol.to(z).T
        return self.join(s, h), self.unwrapped_in_window(h)

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws: (y (n, 3N - 6), log p(y) (n,)); stiff torsions outside their window get log p = -inf."""
        z, log_p = self.sample_latent(n, generator)
        y, ok = self.from_latent(z)
        log_p = torch.where(ok, log_p - self.log_det_chol, torch.full_like(log_p, -math.inf))
        return y.to(dtype), log_p.to(dtype)

    def to_latent(self, y: torch.Tensor) -> torch.Tensor:
        """Internal coordinates y (B, 3N - 6) -> latent z = (s, eps), the inverse of :meth:`from_latent`."""
        s, h = self.split(y)
        eps = torch.linalg.solve_triangular(self.chol.to(y), (h - self._mean(s)).T, upper=False).T
        return torch.cat([s, eps], dim=1)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log density of internal coordinates y (B, 3N - 6)."""
        return self.latent_log_prob(self.to_latent(y)) - self.log_det_chol

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, ic: InternalCoordinates, x: np.ndarray, log_w: np.ndarray | None, topology,
            stiff_below: float = 0.35, bins_2d: int = 36, bins_1d: int = 72, smooth_bins: float = 1.0,
            floor: float = 0.05, order: int = 2, ridge: float = 1e-3, jitter: float = 1e-10, local: bool = False,
            parent_bonds: int = 0, torsion_bonds: int = 0) -> "StructuredBase":
        """Fit to frames x (M, N, 3) nm with log weights (None: equal). ``topology`` (mdtraj, the
        molecule's) gives the bonds and the backbone (phi, psi) pairs that get joint histograms.

        ``local``: p(h | s) as the sparse network of the module docstring; a near-linear coordinate's
        parents are the earlier ones whose atoms lie within ``parent_bonds`` bonds of its own (0: share
        an atom; -1: none), and its mean follows the soft torsions whose axis lies within
        ``torsion_bonds`` bonds of its atoms (-1: none, a constant mean)."""
        from ..analysis.timeseries import backbone_residues

        y = ic.forward(torch.as_tensor(x, dtype=torch.float64))
        w = np.ones(len(y)) if log_w is None else np.exp(np.asarray(log_w) - np.max(log_w))
        w = w / w.sum()
        zm = ic.zmatrix
        quads = zm.torsion_atoms()
        bonded = {frozenset((b[0].index, b[1].index)) for b in topology.bonds}
        # proper torsions (c bonded to b) turn about the bond a-b; an improper-like one is its own group
        axis = [frozenset((int(a), int(b))) if frozenset((int(b), int(c))) in bonded else ("improper", j)
                for j, (_, a, b, c) in enumerate(quads)]
        first: dict = {}
        lead = np.array([first.setdefault(ax, j) for j, ax in enumerate(axis)])
        rel = shear_torsions(y[:, ic.torsions], torch.as_tensor(lead), -1).numpy()
        centre, spread = circular_spread(rel, w)
        soft = np.flatnonzero(spread >= stiff_below)
        # (phi, psi) pairs of each residue among the soft torsions, by the bond they turn about
        pairs_atoms = [(frozenset(phi[1:3]), frozenset(psi[1:3])) for _, phi, psi in backbone_residues(topology)]
        position = {int(j): n for n, j in enumerate(soft)}
        soft_axis = {axis[j]: position[int(j)] for j in soft if lead[j] == j}
        pairs = [(soft_axis[a], soft_axis[b]) for a, b in pairs_atoms if a in soft_axis and b in soft_axis]
        paired = {i for p in pairs for i in p}
        groups = [tuple(p) for p in pairs] + [(i,) for i in range(len(soft)) if i not in paired]
        s = rel[:, soft]
        histograms = [TorusHistogram.fit(s[:, list(g)], w, bins_2d if len(g) == 2 else bins_1d, smooth_bins, floor)
                      for g in groups]
        base = cls(ic, lead, soft, centre, groups, histograms, np.zeros((1, 1)), np.eye(1), order, pairs)
        s_t, h_t = base.split(y)
        f = fourier_features(s_t, pairs, order).numpy()
        h = h_t.numpy()
        if local:
            from ..nn.equivariant import bond_distances
            h_atoms, s_atoms = base._coordinate_atoms(quads)
            coef, chol = _fit_local_gaussian(f, h, w, _feature_torsions(len(soft), pairs, order), h_atoms, s_atoms,
                                             bond_distances(topology), parent_bonds, torsion_bonds, ridge, jitter)
            return cls(ic, lead, soft, centre, groups, histograms, coef, chol, order, pairs)
        # weighted ridge regression: the penalty (relative to each feature's weighted power; none on
        # the constant) keeps the means tame where the frames are sparse
        gram = (f * w[:, None]).T @ f
        penalty = ridge * np.diag(np.r_[0.0, np.diag(gram)[1:]])
        coef = np.linalg.solve(gram + penalty, (f * w[:, None]).T @ h)
        resid = h - f @ coef
        cov = (resid * w[:, None]).T @ resid
        cov += jitter * np.diag(np.diag(cov)) + 1e-14 * np.eye(len(cov))
        chol = np.linalg.cholesky(cov)
        return cls(ic, lead, soft, centre, groups, histograms, coef, chol, order, pairs)

    def _coordinate_atoms(self, quads: np.ndarray) -> tuple[list[set], list[set]]:
        """The topology atoms of each near-linear coordinate (a bond's two, an angle's three, a stiff torsion's
        four) and the axis (two atoms) of each soft torsion's group lead."""
        zm = self.ic.zmatrix
        o, ref = zm.order, zm.ref
        bonds = [{int(o[i]), int(o[ref[i, 0]])} for i in range(1, zm.n_atoms)]
        angles = [{int(o[i]), int(o[ref[i, 0]]), int(o[ref[i, 1]])} for i in range(2, zm.n_atoms)]
        lead = self.lead.numpy()
        h_atoms = bonds + angles + [set(map(int, quads[t])) for t in self.stiff.numpy()]
        s_atoms = [set(map(int, quads[lead[t], 1:3])) for t in self.soft.numpy()]
        return h_atoms, s_atoms

    def describe(self) -> dict:
        return {"soft_torsions": int(len(self.soft)), "stiff_coordinates": int(self.n_linear),
                "histograms": [len(g) for g in self.groups], "pairs": len(self.pairs),
                "fourier_order": self.order}


def _feature_torsions(k: int, pairs: list[tuple[int, int]], order: int) -> list[set]:
    """Per column of :func:`fourier_features`, the soft torsions it depends on (the constant: none)."""
    cols: list[set] = [set()]
    for _ in range(order):
        cols += [{j} for j in range(k)] * 2
    for a, b in pairs:
        cols += [{a, b}] * 4
    return cols


def _fit_local_gaussian(f: np.ndarray, h: np.ndarray, w: np.ndarray, feature_torsions: list[set],
                        h_atoms: list[set], s_atoms: list[set], dist: np.ndarray, parent_bonds: int,
                        torsion_bonds: int, ridge: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """The sparse Gaussian network of p(h | s) (module docstring) by weighted ridge regression per coordinate:
    h_i on its local feature columns of f (penalised by ``ridge`` relative to each column's weighted power) and
    on its parents' values (penalised by ``jitter`` times their variance, a guard against exactly collinear
    parents). With every coordinate a parent of the later ones and every torsion feeding every mean (large
    radii), ``ridge`` = 0 and ``jitter`` = 0, this is the full fit's Gaussian (the maximum-likelihood Gaussian
    regression factorises into these sequential regressions). Returns (coef (F, m), chol (m, m) lower)."""
    m = h.shape[1]

    def near(a: set, b: set) -> int:
        return int(dist[np.ix_(list(a), list(b))].min())

    power = w @ f ** 2
    var = w @ (h - w @ h) ** 2
    a_mat, b_mat, sigma = np.zeros((m, m)), np.zeros((f.shape[1], m)), np.zeros(m)
    for i in range(m):
        local = {j for j, atoms in enumerate(s_atoms) if near(h_atoms[i], atoms) <= torsion_bonds}
        cols = [c for c, tors in enumerate(feature_torsions) if tors <= local]
        parents = [j for j in range(i) if near(h_atoms[i], h_atoms[j]) <= parent_bonds]
        design = np.concatenate([f[:, cols], h[:, parents]], axis=1)
        gram = (design * w[:, None]).T @ design
        penalty = np.r_[ridge * power[cols] * (np.asarray(cols) > 0), jitter * var[parents]]
        beta = np.linalg.solve(gram + np.diag(penalty), (design * w[:, None]).T @ h[:, i])
        resid = h[:, i] - design @ beta
        sigma[i] = math.sqrt((w @ resid ** 2) * (1 + jitter) + 1e-14)
        b_mat[cols, i] = beta[:len(cols)]
        a_mat[i, parents] = beta[len(cols):]
    # (I - A) h = B^T f + diag(sigma) eps: unit lower triangular, so (I - A)^-1 is too
    inv = np.linalg.solve(np.eye(m) - a_mat, np.eye(m))
    return b_mat @ inv.T, np.tril(inv) * sigma


def _std_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    return -0.5 * (eps ** 2).sum(1) - 0.5 * eps.shape[1] * math.log(2 * math.pi)


class StateMixtureBase:
    """q(y) = sum_c pi_c q_c(y): a structured base fitted to all frames (c = 0, weight pi_0) and one per
    named state (a residue's phi > 0 state), fitted to the frames in it, sharing the rest of the weight.

    A residue's rare state gets its own well-fitted proposal, so the estimate of its population rests on
    many effective draws instead of a few dozen heavy-tailed weights. The density is exact for every
    draw whichever component drew it (the log-sum-exp of the components' exact densities); a draw whose
    stiff torsion left its component's window gets log q = -inf, as from a single base. The mixture has
    no single latent space, so it is used without a map (the base alone)."""

    def __init__(self, components: list[StructuredBase], log_pi: np.ndarray, names: list[str]):
        if len(components) != len(log_pi) or len(names) != len(components) - 1:
            raise ValueError("one log weight per component and one name per state component")
        self.components, self.names = list(components), list(names)
        self.log_pi = torch.as_tensor(np.asarray(log_pi, dtype=np.float64))
        if not abs(float(torch.logsumexp(self.log_pi, 0))) < 1e-9:
            raise ValueError("the mixture weights must sum to 1")
        self.ic = self.components[0].ic           # the checkpoint's Z-matrix check reads it

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log density of internal coordinates y (B, 3N - 6) under the mixture."""
        terms = [c.log_prob(y) + float(lp) for c, lp in zip(self.components, self.log_pi)]
        return torch.logsumexp(torch.stack(terms), dim=0)

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws (y, log q(y)) in random order: each from component c with probability pi_c."""
        which = torch.multinomial(self.log_pi.exp(), n, replacement=True, generator=generator)
        y = torch.empty(n, self.ic.dim, dtype=torch.float64)
        valid = torch.ones(n, dtype=torch.bool)
        for c, comp in enumerate(self.components):
            idx = torch.nonzero(which == c).flatten()
            if len(idx):
                yc, lq = comp.sample(len(idx), generator)
                y[idx], valid[idx] = yc, torch.isfinite(lq)
        log_q = torch.where(valid, self.log_prob(y), torch.full((n,), -math.inf, dtype=torch.float64))
        return y.to(dtype), log_q.to(dtype)

    def describe(self) -> dict:
        return {"mixture": {"weights": self.log_pi.exp().tolist(), "states": self.names},
                **self.components[0].describe()}

    @classmethod
    def fit(cls, base: StructuredBase, x: np.ndarray, log_w: np.ndarray, topology, share: float, power: float,
            **fit_kwargs) -> "StateMixtureBase":
        """``base`` (weight 1 - share) and, per residue with phi and psi, a base of the same settings fitted to
        the frames x with that residue's 0 < phi < pi, weighted by w^power (share / residues each)."""
        from ..analysis.timeseries import backbone_residues
        from ..umbrella.windows import dihedral
        residues = backbone_residues(topology)
        if not residues:
            raise ValueError("base.state_mixture: the molecule has no residue with phi and psi")
        if not 0 < share < 1:
            raise ValueError(f"base.state_mixture must lie in (0, 1), got {share}")
        comps, names = [base], []
        lw = power * (np.asarray(log_w, dtype=np.float64) - np.max(log_w))
        for name, phi_atoms, _ in residues:
            inside = dihedral(x, phi_atoms) > 0
            if inside.sum() < 50:
                raise ValueError(f"base.state_mixture: only {int(inside.sum())} frames with {name}'s phi > 0 "
                                 "(at least 50 are needed to fit its component); add frames that visit it "
                                 "(replica exchange, an umbrella along its phi)")
            comps.append(StructuredBase.fit(base.ic, x[inside], lw[inside], topology, **fit_kwargs))
            names.append(f"{name} phi > 0")
        k = len(residues)
        log_pi = np.log(np.r_[1.0 - share, np.full(k, share / k)])
        return cls(comps, log_pi, names)
