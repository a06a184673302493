"""An E(n)-equivariant, step-conditioned drift core for particle systems and molecules.

Design (chosen for a CPU budget of 256 alanine dipeptides fwd+bwd <= 0.25 s on 2 cores, and
for cheap exact Jacobians): scalar-only messages on the dense graph of all pairs, from node types,
a static edge type (bond-graph distance for molecules), a radial basis of the pair distance
(e3nn's ``soft_one_hot_linspace``) and the (t, d) embedding; vector output as a sum of relative
position vectors weighted by invariant pair scalars,

    v_i = sum_{j != i} (x_i - x_j) phi_ij / (1 + r_ij),

projected onto the zero-centroid subspace. Every input to the scalars is invariant under
rotations, reflections, translations and permutations that preserve node and edge types, so v is
E(s)-equivariant (s = 2 or 3) and permutation-equivariant; it is parity-even, so mirror images
are drawn equally (`molsample compare` folds D-alanine onto L for mirror-symmetric force fields). Full e3nn tensor products with l = 1 features
were measured at 2-10 s for the same batch and are not used.
"""
from __future__ import annotations

import numpy as np
import torch
from e3nn.math import soft_one_hot_linspace
from torch import nn

from ..flow import Space
from .drift import TimeStepEmbedding


class EquivariantCore(nn.Module):
    """u(x, t, d) for particles x : (B, N, s), output (B, N, s), zero centroid.

    Per layer k, with one nonlinearity on each edge and the dense matrix products on nodes only:

        m_ij = silu(A h_i + B h_j + R rbf(r_ij) + E[type_ij] + c_k(t, d)),
        h_i <- h_i + MLP([h_i, (1/N) sum_j m_ij]),

    and the output v_i = sum_j (x_i - x_j) (w . m_ij) / (1 + r_ij) from the last layer. Keeping
    edge work elementwise makes the forward-mode Jacobian (exact weights) cheap: the tangent of
    R rbf(r_ij) is dr_ij * (R rbf'(r_ij)), a primal-sized tensor times a scalar per edge.

    Parameters
    ----------
    space : Space with event_shape (N, s)
    node_types : sequence of int, length N
        Type index of every particle (identical particles share a type).
    edge_types : array of int, shape (N, N), optional
        Static type of every pair (e.g. bond-graph distance class); all zeros when omitted.
    hidden : int
        Width of the scalar features.
    layers : int
        Message-passing layers.
    n_rbf : int
        Gaussian radial basis functions on [0, r_max].
    r_max : float
        Range of the radial basis, in the target's length unit.
    """

    def __init__(self, space: Space, node_types, edge_types=None, hidden: int = 32, layers: int = 3,
                 n_rbf: int = 16, r_max: float = 1.0, n_freq: int = 8, n_base: int = 32):
        super().__init__()
        n, s = space.event_shape
        node_types = torch.as_tensor(np.asarray(node_types), dtype=torch.long)
        if node_types.shape != (n,):
            raise ValueError(f"node_types must have length {n}, got shape {tuple(node_types.shape)}")
        edge = torch.zeros(n, n, dtype=torch.long) if edge_types is None else \
            torch.as_tensor(np.asarray(edge_types), dtype=torch.long)
        if edge.shape != (n, n):
            raise ValueError(f"edge_types must have shape ({n}, {n}), got {tuple(edge.shape)}")
        self.space, self.n_rbf, self.r_max, self.hidden = space, int(n_rbf), float(r_max), int(hidden)
        self.register_buffer("node_types", node_types)
        self.register_buffer("edge_types", edge)
        self.register_buffer("offdiag", 1.0 - torch.eye(n, dtype=torch.float64))
        self.embed = TimeStepEmbedding(n_freq, n_base)
        self.node_emb = nn.Embedding(int(node_types.max()) + 1, hidden)
        self.edge_emb = nn.ModuleList([nn.Embedding(int(edge.max()) + 1, hidden) for _ in range(layers)])
        self.cond = nn.Sequential(nn.Linear(self.embed.dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden * (layers + 1)))
        self.src = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.dst = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(layers)])
        self.rad = nn.ModuleList([nn.Linear(n_rbf, hidden, bias=False) for _ in range(layers)])
        self.upd = nn.ModuleList([nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                  for _ in range(layers)])
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _rbf(self, r: torch.Tensor) -> torch.Tensor:
        return soft_one_hot_linspace(r, 0.0, self.r_max, self.n_rbf, basis="gaussian", cutoff=False)

    def _static(self, x, t, d):
        rel = x[:, :, None, :] - x[:, None, :, :]                          # (B, N, N, s)
        r = torch.sqrt(rel.pow(2).sum(-1) + 1e-12)                          # (B, N, N)
        cond = self.cond(self.embed(t, d)).reshape(x.shape[0], -1, self.hidden)   # (B, L + 1, H)
        h = self.node_emb(self.node_types)[None] + cond[:, :1]              # (B, N, H)
        return rel, r, cond, h, self.offdiag.to(x.dtype)

    def _pre(self, k, h, rbf, cond):
        return (self.src[k](h)[:, :, None] + self.dst[k](h)[:, None, :] + self.rad[k](rbf)
                + self.edge_emb[k](self.edge_types)[None] + cond[:, k + 1, None, None])

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """x : (B, N, s); t, d : (B,) -> (B, N, s)."""
        n = x.shape[1]
        rel, r, cond, h, mask = self._static(x, t, d)
        rbf = self._rbf(r)
        m = None
        for k in range(len(self.src)):
            m = nn.functional.silu(self._pre(k, h, rbf, cond))             # (B, N, N, H)
            h = h + self.upd[k](torch.cat([h, torch.einsum("bijh,ij->bih", m, mask) / n], dim=-1))
        phi = self.out(m)[..., 0] * mask / (1.0 + r)                        # (B, N, N)
        v = torch.einsum("bij,bijs->bis", phi, rel)
        return v - v.mean(dim=1, keepdim=True)

    def forward_and_jvp(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, xdot: torch.Tensor):
        """Output and its directional derivatives along T tangents at once, by hand-written forward
        mode; differentiable in the parameters when grad is enabled (reverse KL with exact log-det).

        x : (B, N, s); xdot : (T, B, N, s) -> (v (B, N, s), vdot (T, B, N, s)).
        The edge tangents are never formed: each layer's aggregated tangent is a sum of batched
        contractions of primal (B, N, N, H) tensors with per-edge or per-node tangents, so a
        tangent costs about one forward pass of dense matrix products. Checked against autograd.
        """
        n = x.shape[1]
        lin = lambda layer, z: z @ layer.weight.T                           # linear part of a Linear
        dsilu = lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))
        rel, r, cond, h, mask = self._static(x, t, d)
        # dr_ij = rel_ij . (xdot_i - xdot_j) / r_ij
        dr = (torch.einsum("bijs,tbis->tbij", rel, xdot) - torch.einsum("bijs,tbjs->tbij", rel, xdot)) / r
        rbf, rbf_prime = torch.func.jvp(self._rbf, (r,), (torch.ones_like(r),))   # elementwise in r
        dh, m, sm, dsrc, ddst, sg = None, None, None, None, None, None      # h0 does not depend on x
        for k in range(len(self.src)):
            pre = self._pre(k, h, rbf, cond)
            m = nn.functional.silu(pre)
            sm = dsilu(pre) * mask[..., None]                                # d silu at every edge, masked
            sg = sm * lin(self.rad[k], rbf_prime)                            # d m_ij / d r_ij
            dagg = torch.einsum("tbij,bijh->tbih", dr, sg)
            if dh is not None:
                dsrc, ddst = lin(self.src[k], dh), lin(self.dst[k], dh)
                dagg = dagg + sm.sum(2) * dsrc + torch.einsum("bijh,tbjh->tbih", sm, ddst)
            dagg = dagg / n
            agg = torch.einsum("bijh,ij->bih", m, mask) / n
            l1, l2 = self.upd[k][0], self.upd[k][2]
            z1 = l1(torch.cat([h, agg], dim=-1))
            dz1 = lin(l1, torch.cat([dh if dh is not None else torch.zeros_like(dagg), dagg], dim=-1))
            dupd = lin(l2, dsilu(z1) * dz1)
            h = h + l2(nn.functional.silu(z1))
            dh = dupd if dh is None else dh + dupd
        w = self.out.weight[0]
        p = self.out(m)[..., 0]
        dp = dr * (sg @ w)                                                   # last layer's d(w . m_ij)
        if dsrc is not None:
            smw = sm * w
            dp = dp + torch.einsum("tbih,bijh->tbij", dsrc, smw) + torch.einsum("tbjh,bijh->tbij", ddst, smw)
        phi = p * mask / (1.0 + r)
        dphi = dp * mask / (1.0 + r) - p * mask * dr / (1.0 + r) ** 2
        v = torch.einsum("bij,bijs->bis", phi, rel)
        # sum_j phi_ij (xdot_i - xdot_j)
        dv = (torch.einsum("tbij,bijs->tbis", dphi, rel) + phi.sum(2)[..., None] * xdot
              - torch.einsum("bij,tbjs->tbis", phi, xdot))
        return v - v.mean(dim=1, keepdim=True), dv - dv.mean(dim=2, keepdim=True)

    def jacobian(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, basis: torch.Tensor,
                 chunk: int = 16) -> torch.Tensor:
        """Q^T (dv/dx) Q at each sample, (B, dof, dof), with Q = ``basis`` (dim, dof); batches of
        ``chunk`` samples bound the memory of the (dof, chunk, N, N, hidden) tangents."""
        n, s = self.space.event_shape
        dof = basis.shape[1]
        tang = basis.T.reshape(dof, 1, n, s)
        out = []
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            _, dv = self.forward_and_jvp(xb, t[i:i + chunk], d[i:i + chunk], tang.expand(dof, xb.shape[0], n, s))
            out.append((dv.reshape(dof, xb.shape[0], n * s) @ basis).permute(1, 2, 0))
        return torch.cat(out)


def atom_parameters(target) -> list[tuple[str, float, float, float]]:
    """Per atom (topology order) of an OpenMM-backed molecule: (element symbol, charge e, sigma nm,
    epsilon kJ/mol) from its NonbondedForce (zeros where the system has none)."""
    import openmm
    nb = next((f for f in target.system.getForces() if isinstance(f, openmm.NonbondedForce)), None)
    out = []
    for i, atom in enumerate(target.topology.atoms):
        params = nb.getParticleParameters(i) if nb is not None else (0, 0, 0)
        q, sig, eps = (float(p._value) if hasattr(p, "_value") else float(p) for p in params)
        out.append((atom.element.symbol, q, sig, eps))
    return out


def bond_distances(topology) -> np.ndarray:
    """(N, N) number of bonds on the shortest path between two atoms (0 on the diagonal, N + 1 where there is
    no path)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path
    n = topology.n_atoms
    ij = np.array([(b[0].index, b[1].index) for b in topology.bonds], dtype=int).reshape(-1, 2)
    adj = coo_matrix((np.ones(len(ij)), (ij[:, 0], ij[:, 1])), shape=(n, n))
    d = shortest_path(adj, directed=False, unweighted=True)
    return np.where(np.isfinite(d), d, n + 1).astype(int)


def bond_graph_classes(topology) -> np.ndarray:
    """(N, N) bond-graph distance class of every atom pair: 1, 2, 3 or >= 4 bonds apart as 0-3
    (the diagonal, never bonded to itself, falls in class 3)."""
    dist = bond_distances(topology)
    np.fill_diagonal(dist, 4)
    return np.clip(dist, 1, 4) - 1


def molecule_types(target) -> tuple[np.ndarray, np.ndarray]:
    """Node and edge types of an OpenMM-backed molecule.

    Node type: the atom's (element, charge, sigma, epsilon) from its NonbondedForce, so
    force-field-identical atoms (e.g. methyl hydrogens) share a type and the network is
    equivariant to permuting them. Edge type: bond-graph distance 1, 2, 3 or >= 4 (classes 0-3).
    """
    keys = [(el, round(q, 4), round(sig, 4), round(eps, 4)) for el, q, sig, eps in atom_parameters(target)]
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    node = np.array([uniq[k] for k in keys])
    return node, bond_graph_classes(target.topology)
