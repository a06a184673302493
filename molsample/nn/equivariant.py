"""An E(n)-equivariant, step-conditioned drift core for particle systems and molecules.

Design (chosen for the CPU budget in BUDGETS.md: 256 alanine dipeptides fwd+bwd <= 0.25 s):
scalar-only messages on the dense graph of all pairs, from node types, a static edge type (bond
graph distance for molecules), a radial basis of the pair distance (e3nn's
``soft_one_hot_linspace``) and the (t, d) embedding; vector output as a sum of relative position
vectors weighted by invariant pair scalars,

    v_i = sum_{j != i} (x_i - x_j) phi_ij / (1 + r_ij),

projected onto the zero-centroid subspace. Every input to the scalars is invariant under
rotations, reflections, translations and permutations that preserve node and edge types, so v is
E(s)-equivariant (s = 2 or 3) and permutation-equivariant; it is parity-even, so mirror images
are drawn equally (see TARGETS.md on chirality). Full e3nn tensor products with l = 1 features
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
        Radial basis functions on [0, r_max].
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
        self.msg = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.upd = nn.ModuleList([nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                  for _ in range(layers)])
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """x : (B, N, s); t, d : (B,) -> (B, N, s)."""
        b, n, _ = x.shape
        rel = x[:, :, None, :] - x[:, None, :, :]                          # (B, N, N, s)
        r = torch.sqrt(rel.pow(2).sum(-1) + 1e-12)                          # (B, N, N)
        rbf = soft_one_hot_linspace(r, 0.0, self.r_max, self.n_rbf, basis="gaussian", cutoff=False)
        cond = self.cond(self.embed(t, d)).reshape(b, -1, self.hidden)      # (B, L + 1, H)
        mask = self.offdiag.to(x.dtype)
        h = self.node_emb(self.node_types)[None] + cond[:, :1]              # (B, N, H)
        m = None
        for k in range(len(self.msg)):
            pre = (self.src[k](h)[:, :, None] + self.dst[k](h)[:, None, :] + self.rad[k](rbf)
                   + self.edge_emb[k](self.edge_types)[None] + cond[:, k + 1, None, None])
            m = nn.functional.silu(self.msg[k](nn.functional.silu(pre)))  # (B, N, N, H)
            agg = torch.einsum("bijh,ij->bih", m, mask) / n
            h = h + self.upd[k](torch.cat([h, agg], dim=-1))
        phi = self.out(m)[..., 0] * mask / (1.0 + r)                        # (B, N, N)
        v = torch.einsum("bij,bijs->bis", phi, rel)
        return v - v.mean(dim=1, keepdim=True)


def molecule_types(target) -> tuple[np.ndarray, np.ndarray]:
    """Node and edge types of an OpenMM-backed molecule.

    Node type: the atom's (element, charge, sigma, epsilon) from its NonbondedForce, so
    force-field-identical atoms (e.g. methyl hydrogens) share a type and the network is
    equivariant to permuting them. Edge type: bond-graph distance 1, 2, 3 or >= 4 (classes 0-3).
    """
    import openmm
    system = target.system
    nb = next((f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)), None)
    top = target.topology
    keys = []
    for i, atom in enumerate(top.atoms):
        params = nb.getParticleParameters(i) if nb is not None else (0, 0, 0)
        q, sig, eps = (float(p._value) if hasattr(p, "_value") else float(p) for p in params)
        keys.append((atom.element.symbol, round(q, 4), round(sig, 4), round(eps, 4)))
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    node = np.array([uniq[k] for k in keys])
    n = len(keys)
    adj = np.zeros((n, n), dtype=bool)
    for a, b in top.bonds:
        adj[a.index, b.index] = adj[b.index, a.index] = True
    dist = np.full((n, n), 4)
    reach, cur = np.eye(n, dtype=bool), np.eye(n, dtype=bool)
    for k in range(1, 4):
        cur = (cur.astype(int) @ adj.astype(int)) > 0
        new = cur & ~reach
        dist[new] = k
        reach |= cur
    return node, np.clip(dist, 1, 4) - 1
