"""A graph network over the molecule as the one-step map's drift on the structured base's latent space.

The latent z = (s, eps) of :class:`~molsample.coords.base.StructuredBase` belongs atom by atom to the
Z-matrix: every atom after the first owns a bond, every atom after the second an angle, every atom
after the third a torsion (soft, on the circle, or stiff, a near-linear coordinate), and eps_j is the
whitened innovation of the coordinate it stands for. The network reads these per-atom coordinates,
passes messages along the molecule's graph and writes each atom's (bond, angle, torsion) velocity:

- node input: the atom's dynamic coordinates (bond eps, angle eps, cos and sin of a soft torsion, a
  stiff torsion's eps) through one shared matrix, plus a static embedding of the atom's force-field
  parameters (element, charge, sigma, epsilon) and of which coordinates it owns;
- message layers: h' = tanh([h, A_1 h, ..., A_C h] W / sqrt(1 + C) + b), one adjacency per
  bond-graph distance class (1, 2, 3, >= 4 bonds apart), each scaled to spectral norm 1; with
  ``rbf`` > 0 the edges four or more bonds apart (the contacts a few local coordinates do not fix) are
  gated by sigmoid(e3nn radial basis of the current conformation's distance): the gates lie in (0, 1)
  and the adjacencies are non-negative, so a gated adjacency keeps spectral norm <= 1;
- readout: a shared (hidden -> 3) matrix per atom, (bond, angle, torsion) velocities, gathered back
  to the latent order, times ``lipschitz * tanh(gate)`` (gate = 0 at initialisation: the identity).

No parameter's shape depends on the molecule, so one architecture (and one set of weights) applies
to any molecule with a bond graph. The inputs are internal coordinates and distances, so the drift is
invariant under rotations and translations by construction.

Every weight matrix that acts on the coordinates is divided by max(1, its spectral norm). Without
distance gates the drift is then Lipschitz with constant below ``lipschitz`` < 1 and every step is a
bijection, as for :class:`~molsample.coords.flow.LipschitzResidualMap`. The gates add a path through
the conformation that the bound does not cover, so with ``rbf`` > 0 the sign of det(I + d dv/dz) is
measured at every sample (a draw with det <= 0 gets weight 0 and is counted, as for every map). The
exact Jacobian is carried in closed form: the D unit tangents travel through the layers beside the
node states, and for the gates dr_ij/dz = u_ij . (dx_i/dz - dx_j/dz), with dx/dz by forward-mode
differentiation (``torch.func.jvp``) of the base's inverse and the Z-matrix placement.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..nn.equivariant import atom_parameters, bond_graph_classes
from .flow import ResidualMap, _rows

ELEMENTS = ("H", "C", "N", "O", "S", "P")      # one-hot; any other element shares a last column
N_CLASSES = 4                                   # bond-graph distance classes 1, 2, 3, >= 4
GATED = (3,)                                    # classes whose edges see the conformation's distances (the last ones)
N_DYNAMIC = 5                                   # bond eps, angle eps, cos s, sin s, stiff-torsion eps
N_SLOTS = 3                                     # velocity of the bond, angle and torsion


def atom_static_features(target, order: np.ndarray, soft: np.ndarray, stiff: np.ndarray) -> np.ndarray:
    """(N, F) static features per placement position: element one-hot, charge (e), sigma (nm), epsilon
    (kJ/mol), and which coordinates the atom owns (bond, angle, soft torsion, stiff torsion)."""
    params = atom_parameters(target)
    n = len(order)
    feats = np.zeros((n, len(ELEMENTS) + 1 + 3 + 4))
    for p, atom in enumerate(order):
        el, q, sig, eps = params[int(atom)]
        feats[p, ELEMENTS.index(el) if el in ELEMENTS else len(ELEMENTS)] = 1.0
        feats[p, len(ELEMENTS) + 1:len(ELEMENTS) + 4] = (q, sig, eps)
    owns = feats[:, len(ELEMENTS) + 4:]
    owns[1:, 0] = 1.0
    owns[2:, 1] = 1.0
    owns[np.asarray(soft, dtype=int) + 3, 2] = 1.0
    owns[np.asarray(stiff, dtype=int) + 3, 3] = 1.0
    return feats


class GraphResidualMap(ResidualMap):
    """v : (B, k + m) -> (B, k + m) on z = (s, eps), a message-passing network over the molecule.

    Parameters
    ----------
    target : the Cartesian molecular target (OpenMM system and mdtraj topology)
    base : the :class:`~molsample.coords.base.StructuredBase` whose latent the map acts on (its
        soft/stiff split and :meth:`from_latent`, used for the distances when ``rbf`` > 0)
    hidden, layers : width of the node states and number of message layers
    rbf, r_max : radial basis functions of the distance (0: no distance gates) and their range (nm)
    """

    def __init__(self, target, base, hidden: int = 32, layers: int = 3, lipschitz: float = 0.9,
                 rbf: int = 0, r_max: float = 0.8, generator: torch.Generator | None = None,
                 step_conditioned: bool = False):
        super().__init__()
        if not 0 < lipschitz < 1:
            raise ValueError(f"lipschitz = {lipschitz}: must lie in (0, 1) for the step to be a bijection")
        zm = base.ic.zmatrix
        soft, stiff = base.soft.numpy(), base.stiff.numpy()
        n, k, m = zm.n_atoms, len(soft), base.n_linear
        self.k, self.m, self.n_atoms, self.lipschitz = k, m, n, lipschitz
        self.step_conditioned, self.rbf, self.r_max, self.hidden = step_conditioned, rbf, r_max, hidden
        self.base = base                      # not a module: its tensors are fitted, not trained
        nb, na = zm.n_bonds, zm.n_angles

        # latent index -> (placement position, slot); the feature columns each latent value fills
        pos = np.concatenate([soft + 3, np.arange(1, n), np.arange(2, n), stiff + 3]).astype(int)
        slot = np.concatenate([np.full(k, 2), np.zeros(nb, int), np.ones(na, int), np.full(len(stiff), 2)])
        col = np.concatenate([np.full(k, 2), np.zeros(nb, int), np.ones(na, int), np.full(len(stiff), 4)])
        # features (cos s, sin s, eps) -> per-atom dynamic inputs (N * 5); velocities (N * 3) -> latent
        scatter = np.zeros((2 * k + m, n * N_DYNAMIC))
        scatter[np.arange(k), pos[:k] * N_DYNAMIC + 2] = 1.0
        scatter[k + np.arange(k), pos[:k] * N_DYNAMIC + 3] = 1.0
        scatter[2 * k + np.arange(m), pos[k:] * N_DYNAMIC + col[k:]] = 1.0
        gather = np.zeros((n * N_SLOTS, k + m))
        gather[pos * N_SLOTS + slot, np.arange(k + m)] = 1.0
        self.register_buffer("scatter", persistent=False, tensor=torch.as_tensor(scatter))
        self.register_buffer("gather", persistent=False, tensor=torch.as_tensor(gather))

        order = np.asarray(zm.order)
        classes = bond_graph_classes(target.topology)[np.ix_(order, order)]
        adj = np.stack([(classes == c) & ~np.eye(n, dtype=bool) for c in range(N_CLASSES)]).astype(float)
        norms = np.array([max(np.linalg.norm(a, 2), 1e-12) for a in adj])
        self.register_buffer("adjacency", persistent=False, tensor=torch.as_tensor(adj / norms[:, None, None]))
        self.register_buffer("order", persistent=False, tensor=torch.as_tensor(order))
        static = atom_static_features(target, order, soft, stiff)
        self.register_buffer("static", persistent=False, tensor=torch.as_tensor(static))

        def mat(rows, cols):
            return nn.Parameter(torch.randn(rows, cols, generator=generator, dtype=torch.float64) / math.sqrt(cols))

        n_cond = static.shape[1] + (2 if step_conditioned else 0)
        # weights acting on the coordinates (spectrally normalised): input, message layers, readout
        self.weights = nn.ParameterList([mat(hidden, N_DYNAMIC)]
                                        + [mat(hidden, (1 + N_CLASSES) * hidden) for _ in range(layers)]
                                        + [mat(N_SLOTS, hidden)])
        # biases from the static features and (t, d): free, they do not act on z
        self.conditioning = nn.ParameterList([mat(hidden, n_cond) for _ in range(layers + 1)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(hidden, dtype=torch.float64))
                                        for _ in range(layers + 1)])
        if rbf:
            self.gate_weights = nn.Parameter(torch.zeros(len(GATED), rbf, dtype=torch.float64))
            self.gate_biases = nn.Parameter(torch.zeros(len(GATED), dtype=torch.float64))
        self.gate = nn.Parameter(torch.zeros((), dtype=torch.float64))

    # ------------------------------------------------------------------ the drift
    def _conditioning(self, z: torch.Tensor, t, d) -> torch.Tensor:
        """(B, N, F') static features per atom, with (t, d) appended for a step-conditioned map."""
        b = z.shape[0]
        static = self.static.to(z).expand(b, -1, -1)
        if not self.step_conditioned:
            return static
        td = [torch.as_tensor(v, dtype=z.dtype, device=z.device).expand(b) for v in (t, d)]
        td = torch.stack(td, dim=1)[:, None, :].expand(-1, self.n_atoms, -1)
        return torch.cat([static, td], dim=2)

    def _gates(self, z: torch.Tensor, tangent: bool):
        """Distance gates of the gated classes, (B, G, N, N) in (0, 1), and with ``tangent`` their derivatives
        (B, D, G, N, N) along the D unit directions of z; (None, None) without distance gates."""
        if not self.rbf:
            return None, None
        from e3nn.math import soft_one_hot_linspace

        def positions(q):
            y, _ = self.base.from_latent(q)
            x, _ = self.base.ic.inverse(y)
            return x[:, self.order.to(z.device)]

        def logits(r):            # (B, N, N) distances -> (B, N, N, G) gate logits
            basis = soft_one_hot_linspace(r, 0.0, self.r_max, self.rbf, basis="gaussian", cutoff=False)
            return basis @ self.gate_weights.T + self.gate_biases

        b, dim = z.shape
        if not tangent:
            x = positions(z)
            return torch.sigmoid(logits(_distances(x))).permute(0, 3, 1, 2), None
        # dx/dz by forward mode over the batch repeated once per unit tangent (geometry only: cheap)
        eye = torch.eye(dim, dtype=z.dtype, device=z.device)
        x, jx = torch.func.jvp(positions, (z.repeat_interleave(dim, 0),), (eye.repeat(b, 1),))
        x = x.reshape(b, dim, self.n_atoms, 3)[:, 0]
        jx = jx.reshape(b, dim, self.n_atoms, 3)
        r = _distances(x)                                                                   # (B, N, N)
        unit = (x[:, :, None, :] - x[:, None, :, :]) / r[..., None]
        # d r_ij = u_ij . (dx_i - dx_j), and u_ji = -u_ij: the second half is the first's transpose
        half = torch.einsum("bdia,bija->bdij", jx, unit)
        dr = half + half.transpose(2, 3)                                                    # (B, D, N, N)
        lg, dlg = torch.func.jvp(logits, (r,), (torch.ones_like(r),))                      # d logit / d r
        g = torch.sigmoid(lg).permute(0, 3, 1, 2)                                           # (B, G, N, N)
        coef = g * (1 - g) * dlg.permute(0, 3, 1, 2)
        return g, coef[:, :, None] * dr[:, None]                                            # (B, G, D, N, N)

    def _propagate(self, z: torch.Tensor, weights: list[torch.Tensor], t, d, tangent: bool):
        """The drift's output before its gate, (B, N, 3), and with ``tangent`` its derivative along each unit
        direction of z, (B, N, D, 3): the chain rule through the layers in closed form. Tangents are laid
        out (B, N, D, H), so that an adjacency acts on each sample's (N, D * H) block in one product."""
        b, dim = z.shape
        k, n, hid = self.k, self.n_atoms, self.hidden
        s, eps = z[:, :k], z[:, k:]
        scatter = self.scatter.to(z)
        feats = (torch.cat([torch.cos(s), torch.sin(s), eps], dim=1) @ scatter).reshape(b, n, N_DYNAMIC)
        cond = self._conditioning(z, t, d)
        bias = [cond @ c.T + bb for c, bb in zip(self.conditioning, self.biases)]
        fixed_adj = self.adjacency.to(z)                                                    # (C, N, N)
        adj = fixed_adj[None]
        gates, dgates = self._gates(z, tangent)
        if gates is not None:
            fixed = adj[:, :GATED[0]].expand(b, -1, -1, -1)
            adj = torch.cat([fixed, adj[:, GATED[0]:] * gates], dim=1)                     # (B, C, N, N)
            if tangent:                                                                     # (B, G, D * N, N)
                dadj = (fixed_adj[None, GATED[0]:, None] * dgates).reshape(b, len(GATED), dim * n, n)
        h = torch.tanh(feats @ weights[0].T + bias[0])
        jt = None
        if tangent:
            # d feats / dz: -sin s, cos s on a torsion's two columns, 1 on an eps column; then the scatter
            dfeat = torch.zeros(b, dim, 2 * k + dim - k, dtype=z.dtype, device=z.device)
            idx = torch.arange(k, device=z.device)
            dfeat[:, idx, idx] = -torch.sin(s)
            dfeat[:, idx, k + idx] = torch.cos(s)
            lin = torch.arange(dim - k, device=z.device)
            dfeat[:, k + lin, 2 * k + lin] = 1.0
            jt = (dfeat @ scatter).reshape(b, dim, n, N_DYNAMIC).transpose(1, 2) @ weights[0].T
            jt = jt * (1 - h ** 2)[:, :, None]                                              # (B, N, D, H)
        scale = 1.0 / math.sqrt(1 + N_CLASSES)
        # sum_c A_c X W_c as one product per sample: [A_1 .. A_C] (N, C N) times the stacked X W_c (C N, .)
        adjcat = adj.transpose(1, 2).reshape(adj.shape[0], n, N_CLASSES * n)
        for w, bl in zip(weights[1:-1], bias[1:]):
            blocks = w.reshape(hid, 1 + N_CLASSES, hid)                                     # W = [W_self, W_1 .. W_C]
            stacked = blocks[:, 1:].permute(2, 1, 0).reshape(hid, N_CLASSES * hid)          # (H_in, C H_out)
            xw = (h @ stacked).reshape(b, n, N_CLASSES, hid).transpose(1, 2).reshape(b, N_CLASSES * n, hid)
            h_new = torch.tanh(scale * (h @ blocks[:, 0].T + adjcat @ xw) + bl)
            if tangent:
                xw = (jt @ stacked).reshape(b, n, dim, N_CLASSES, hid).permute(0, 3, 1, 2, 4)
                dpre = jt @ blocks[:, 0].T + (adjcat @ xw.reshape(b, N_CLASSES * n, dim * hid)).reshape(b, n, dim, hid)
                if gates is not None:                                                       # + (A_c o d gate_c) h W_c
                    for i, c in enumerate(GATED):
                        extra = (dadj[:, i] @ (h @ blocks[:, 1 + c].T)).reshape(b, dim, n, hid)
                        dpre = dpre + extra.transpose(1, 2)
                jt = scale * dpre * (1 - h_new ** 2)[:, :, None]
            h = h_new
        out = h @ weights[-1].T
        return out, (jt @ weights[-1].T if tangent else None)

    def velocity(self, z: torch.Tensor, weights: list[torch.Tensor], t=0.0, d=1.0) -> torch.Tensor:
        """v(z; t, d) for z (B, k + m) with pre-normalised weights; t and d (numbers or (B,)) are seen
        only by a step-conditioned map."""
        out, _ = self._propagate(z, weights, t, d, tangent=False)
        out = out.reshape(z.shape[0], self.n_atoms * N_SLOTS) @ self.gather.to(z)
        return self.lipschitz * torch.tanh(self.gate) * out

    def jacobian(self, z: torch.Tensor, weights: list[torch.Tensor] | None = None, t=0.0, d=1.0,
                 chunk: int = 32) -> torch.Tensor:
        """d(d v)/dz (B, D, D) in closed form: the D unit tangents carried through the layers beside the
        states (and through the conformation's distances to the gates), in chunks of ``chunk`` samples (small
        chunks keep every temporary a few MB, which the allocator reuses instead of mapping fresh pages);
        differentiable, for training by the exact log-det."""
        weights = self.normalised() if weights is None else weights
        n, dim = z.shape
        gather = self.gather.to(z)
        out = []
        for i in range(0, n, chunk):
            zb = z[i:i + chunk]
            tb, db = (_rows(v, i, zb.shape[0]) for v in (t, d))
            _, jt = self._propagate(zb, weights, tb, db, tangent=True)
            jt = jt.transpose(1, 2).reshape(zb.shape[0], dim, self.n_atoms * N_SLOTS)
            out.append((jt @ gather).transpose(1, 2))
        dd = torch.as_tensor(d, dtype=z.dtype, device=z.device)
        jac = self.lipschitz * torch.tanh(self.gate) * torch.cat(out)
        return (dd[:, None, None] if dd.dim() else dd) * jac

def _distances(x: torch.Tensor) -> torch.Tensor:
    """(B, N, N) pairwise distances of (B, N, 3) positions (kept off zero on the diagonal)."""
    return torch.sqrt(((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1) + 1e-12)
