"""Cartesian <-> internal coordinates for a Z-matrix, batched, differentiable, any dtype and device.

Internal coordinates z, shape (B, 3N - 6): bonds r_1..r_{N-1} (nm), angles theta_2..theta_{N-1}
in (0, pi), torsions phi_3..phi_{N-1} in (-pi, pi] (radians), in the Z-matrix's placement order.
The inverse places atoms in the canonical frame (first atom at the origin, second on +x, third in
the xy-plane with y > 0), level by level of the placement tree, and returns the exact

    log |det dx/dz| = log r_2 + sum_{i >= 3} (2 log r_i + log sin theta_i)

of the map from z to the 3N - 6 free Cartesian coordinates of that frame (x_1 along the axis,
x_2 in the plane, every other atom in space).
"""
from __future__ import annotations

import numpy as np
import torch

from .zmatrix import ZMatrix, build_zmatrix


def dihedral(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Torsion angle p0-p1-p2-p3 in (-pi, pi] (IUPAC sign, as mdtraj), points of shape (..., 3)."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    c1, c2 = torch.linalg.cross(b2, b3), torch.linalg.cross(b1, b2)
    return torch.atan2((b1 * c1).sum(-1) * b2.norm(dim=-1), (c1 * c2).sum(-1))


def angle(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Angle p0-p1-p2 in [0, pi], points of shape (..., 3)."""
    u, v = p0 - p1, p2 - p1
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def place(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, r: torch.Tensor, theta: torch.Tensor,
          phi: torch.Tensor) -> torch.Tensor:
    """NeRF: the point i with |i - a| = r, angle(i, a, b) = theta, dihedral(i, a, b, c) = phi.

    a, b, c : (..., 3); r, theta, phi : (...) -> (..., 3)."""
    ab = a - b
    ab = ab / ab.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(b - c, ab)
    n = n / n.norm(dim=-1, keepdim=True)
    m = torch.linalg.cross(n, ab)
    rs = r * torch.sin(theta)
    d = (-r * torch.cos(theta))[..., None] * ab + (rs * torch.cos(phi))[..., None] * m \
        + (rs * torch.sin(phi))[..., None] * n
    return a + d


class InternalCoordinates:
    """The bijection between Cartesian conformations (modulo rigid motion) and internal coordinates.

    Parameters
    ----------
    zmatrix : ZMatrix, or an mdtraj topology (its Z-matrix is built by :func:`build_zmatrix`)
    """

    def __init__(self, zmatrix):
        self.zmatrix = zmatrix if isinstance(zmatrix, ZMatrix) else build_zmatrix(zmatrix)
        z = self.zmatrix
        self.n_atoms, self.dim = z.n_atoms, z.dim
        self.order = torch.as_tensor(z.order)
        self.inverse_order = torch.as_tensor(np.argsort(z.order))
        self.ref = torch.as_tensor(z.ref)
        self.levels = [torch.as_tensor(level) for level in z.levels]
        nb, na = z.n_bonds, z.n_angles
        self.bonds = slice(0, nb)
        self.angles = slice(nb, nb + na)
        self.torsions = slice(nb + na, z.dim)

    @property
    def torsion_mask(self) -> torch.Tensor:
        """(3N - 6,) bool: True at torsion coordinates (periodic), False at bonds and angles."""
        mask = torch.zeros(self.dim, dtype=torch.bool)
        mask[self.torsions] = True
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor, shape (B, N, 3), nm (topology order) -> z : (B, 3N - 6)."""
        if x.dim() != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"expected positions of shape (B, {self.n_atoms}, 3), got {tuple(x.shape)}")
        p = x[:, self.order.to(x.device)]
        ref = self.ref.to(x.device)
        i = torch.arange(1, self.n_atoms, device=x.device)
        r = (p[:, i] - p[:, ref[i, 0]]).norm(dim=-1)
        i = torch.arange(2, self.n_atoms, device=x.device)
        theta = angle(p[:, i], p[:, ref[i, 0]], p[:, ref[i, 1]])
        i = torch.arange(3, self.n_atoms, device=x.device)
        phi = dihedral(p[:, i], p[:, ref[i, 0]], p[:, ref[i, 1]], p[:, ref[i, 2]])
        return torch.cat([r, theta, phi], dim=1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z : Tensor, shape (B, 3N - 6) -> (x (B, N, 3) nm in topology order, canonical frame;
        log|det dx/dz| (B,))."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected internal coordinates of shape (B, {self.dim}), got {tuple(z.shape)}")
        n, dev = self.n_atoms, z.device
        r = z[:, self.bonds]                      # r[:, i - 1] is the bond of placement position i
        theta = z[:, self.angles]                 # theta[:, i - 2]
        phi = z[:, self.torsions]                 # phi[:, i - 3]
        ref = self.ref.to(dev)
        bsz = z.shape[0]
        zero = torch.zeros(bsz, dtype=z.dtype, device=dev)
        x0 = torch.zeros(bsz, 3, dtype=z.dtype, device=dev)
        x1 = torch.stack([r[:, 0], zero, zero], dim=1)
        # third atom: bonded to position a2 (0 or 1), angle with the other; in the xy-plane, y > 0
        a2 = int(ref[2, 0])
        direction = 1.0 if a2 == 0 else -1.0          # unit vector from atom a2 towards the other one
        t2 = theta[:, 0]
        x2 = (x0 if a2 == 0 else x1) + torch.stack([direction * r[:, 1] * torch.cos(t2), r[:, 1] * torch.sin(t2),
                                                    zero], dim=1)
        p = torch.zeros(bsz, n, 3, dtype=z.dtype, device=dev)
        p = p.index_copy(1, torch.tensor([0, 1, 2], device=dev), torch.stack([x0, x1, x2], dim=1))
        for level in self.levels:
            level = level.to(dev)
            a, b, c = ref[level, 0], ref[level, 1], ref[level, 2]
            new = place(p[:, a], p[:, b], p[:, c], r[:, level - 1], theta[:, level - 2], phi[:, level - 3])
            p = p.index_copy(1, level, new)
        log_det = torch.log(r[:, 1]) + 2 * torch.log(r[:, 2:]).sum(1) + torch.log(torch.sin(theta[:, 1:])).sum(1)
        return p[:, self.inverse_order.to(dev)], log_det

    def canonical_frame(self, x: torch.Tensor) -> torch.Tensor:
        """x moved rigidly into the canonical frame of the Z-matrix (the inverse of its forward)."""
        return self.inverse(self.forward(x))[0]
