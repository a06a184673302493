"""A Z-matrix from a molecule's bond graph: each atom after the first three is placed by a bond, an
angle and a torsion relative to three atoms placed before it, chosen along bonds.

Heavy atoms come before hydrogens, the first atom is the centre of the heavy-atom graph (short
lever arms), and ring-closure bonds are simply not coordinates (the placement tree is a spanning
tree of the bond graph). The placement tree is cut into levels: every atom of a level depends only
on atoms of earlier levels, so a level is placed at once (NeRF, :mod:`molsample.coords.transform`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


class ZMatrixError(ValueError):
    """A topology that cannot be given internal coordinates (no bonds, several molecules, too few atoms)."""


@dataclass(frozen=True)
class ZMatrix:
    """Placement of N atoms in internal coordinates.

    Attributes
    ----------
    order : ndarray of int, shape (N,)
        Topology atom indices in placement order; ``order[0]`` sits at the origin, ``order[1]``
        on the +x axis, ``order[2]`` in the xy-plane (y > 0).
    ref : ndarray of int, shape (N, 3)
        Per placement position i, the placement positions (a, b, c) of its references: bond
        i-a, angle i-a-b, torsion i-a-b-c. Rows 0-2 hold -1 where a reference does not exist
        (row 1: a = 0; row 2: a, b).
    levels : list of ndarray of int
        Placement positions 3..N-1 grouped so that each level's references lie in earlier levels.
    names : list of str
        One label per coordinate, in the order bonds (N-1), angles (N-2), torsions (N-3).
    """
    order: np.ndarray
    ref: np.ndarray
    levels: list
    names: list

    @property
    def n_atoms(self) -> int:
        return len(self.order)

    @property
    def n_bonds(self) -> int:
        return self.n_atoms - 1

    @property
    def n_angles(self) -> int:
        return self.n_atoms - 2

    @property
    def n_torsions(self) -> int:
        return self.n_atoms - 3

    @property
    def dim(self) -> int:
        """3N - 6 internal coordinates."""
        return 3 * self.n_atoms - 6

    def torsion_atoms(self) -> np.ndarray:
        """Topology atom indices (i, a, b, c) of every torsion coordinate, shape (N - 3, 4)."""
        rows = np.arange(3, self.n_atoms)
        pos = np.stack([rows, self.ref[rows, 0], self.ref[rows, 1], self.ref[rows, 2]], axis=1)
        return self.order[pos]


def _graph(topology) -> tuple[int, list[set[int]], np.ndarray]:
    n = topology.n_atoms
    nbrs = [set() for _ in range(n)]
    for bond in topology.bonds:
        i, j = bond[0].index, bond[1].index
        if i != j:
            nbrs[i].add(j)
            nbrs[j].add(i)
    heavy = np.array([a.element is None or a.element.symbol != "H" for a in topology.atoms])
    return n, nbrs, heavy


def _distances(start: int, nbrs: list[set[int]], allowed: np.ndarray) -> np.ndarray:
    dist = np.full(len(nbrs), -1)
    dist[start] = 0
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in sorted(nbrs[u]):
            if allowed[v] and dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _references(placed: list[int], pos: dict, parent: dict, nbrs: list[set], second: int) -> np.ndarray:
    """(n, 3) positions in the placement order of the bond, angle and torsion partners (a, b, c) of every
    placed atom: a its parent, b the parent's parent (or another placed neighbour of the root), c the next
    one along bonds (or an improper-like partner bonded to a or b where the chain ends)."""
    n = len(placed)
    ref = np.full((n, 3), -1, dtype=np.int64)
    ref[1, 0] = 0
    a2 = pos[parent[second]]
    ref[2, 0], ref[2, 1] = a2, 1 - a2
    for v in placed[3:]:
        a = parent[v]
        b = parent.get(a)
        if b is None:                                  # a is the root: b is another placed neighbour of it
            b = min((w for w in nbrs[a] if w in pos and pos[w] < pos[v] and w != v), key=lambda w: pos[w])
        c = parent.get(b)
        if c is None or c == a or pos[c] >= pos[v]:
            options = [w for w in nbrs[b] if w in pos and pos[w] < pos[v] and w not in (a, v)]
            options += [w for w in nbrs[a] if w in pos and pos[w] < pos[v] and w not in (b, v)]   # improper-like
            if not options:
                options = [w for w in placed[:pos[v]] if w not in (a, b)]
            c = min(options, key=lambda w: pos[w])
        ref[pos[v]] = (pos[a], pos[b], pos[c])

    return ref


def build_zmatrix(topology) -> ZMatrix:
    """The Z-matrix of an mdtraj topology with bonds (one connected molecule, at least 4 atoms)."""
    n, nbrs, heavy = _graph(topology)
    if n < 4:
        raise ZMatrixError(f"internal coordinates need at least 4 atoms, the topology has {n}")
    if not any(nbrs):
        raise ZMatrixError("the topology has no bonds; internal coordinates follow the bond graph "
                           "(give a PDB with CONECT records or standard residues)")
    everyone = np.ones(n, bool)
    if (_distances(0, nbrs, everyone) < 0).any():
        raise ZMatrixError(f"the topology is not one connected molecule ({int((_distances(0, nbrs, everyone) < 0).sum())} "
                           "atoms are not bonded to the first); internal coordinates need a single bond graph")
    # the root: centre of the heavy-atom graph (smallest eccentricity), with at least two heavy neighbours
    candidates = [i for i in range(n) if heavy[i]] or list(range(n))
    allowed = heavy if heavy.sum() >= 3 else everyone

    def eccentricity(i):
        d = _distances(i, nbrs, allowed)
        return (d[allowed & (d >= 0)].max(), -len(nbrs[i] & set(np.flatnonzero(allowed))), i)
    root = min((i for i in candidates if len(nbrs[i]) >= 2), key=eccentricity, default=candidates[0])

    placed: list[int] = [root]
    pos = {root: 0}
    parent: dict[int, int] = {}

    def rank(v):              # heavy atoms first, then those with more heavy neighbours (the backbone), then index
        return (not heavy[v], -int(sum(heavy[w] for w in nbrs[v])), -len(nbrs[v]), v)
    first = min(nbrs[root], key=rank)
    placed.append(first)
    pos[first] = 1
    parent[first] = root
    second = min([v for v in nbrs[root] if v != first] or [v for v in nbrs[first] if v != root], key=rank,
                 default=None)
    if second is None:
        raise ZMatrixError("the first atoms of the molecule form a chain of two; internal coordinates need a "
                           "third bonded atom")
    placed.append(second)
    pos[second] = 2
    parent[second] = root if second in nbrs[root] else first

    # breadth-first over heavy atoms, then hydrogens, always from an already-placed atom
    for want_heavy in (True, False):
        queue = deque(placed)
        while queue:
            u = queue.popleft()
            for v in sorted(nbrs[u], key=rank):
                if v in pos or (want_heavy and not heavy[v]):
                    continue
                pos[v] = len(placed)
                placed.append(v)
                parent[v] = u
                queue.append(v)
    if len(placed) != n:
        raise ZMatrixError("internal error: not every atom was placed")

    ref = _references(placed, pos, parent, nbrs, second)
    level = np.zeros(n, dtype=np.int64)
    for i in range(3, n):
        level[i] = 1 + level[ref[i]].max()
    levels = [np.flatnonzero(level == k) for k in range(1, level.max() + 1)]

    atoms = list(topology.atoms)
    label = [f"{atoms[i].residue.name}{atoms[i].residue.resSeq}:{atoms[i].name}" for i in placed]
    names = ([f"bond {label[i]}-{label[ref[i, 0]]}" for i in range(1, n)]
             + [f"angle {label[i]}-{label[ref[i, 0]]}-{label[ref[i, 1]]}" for i in range(2, n)]
             + [f"torsion {label[i]}-{label[ref[i, 0]]}-{label[ref[i, 1]]}-{label[ref[i, 2]]}" for i in range(3, n)])
    return ZMatrix(np.array(placed, dtype=np.int64), ref, levels, names)
