"""Fixed sparse linear maps (gathers, scatters, differences) applied as matrix products.

Gathers and scatters written as matrix products have cheap, well-vectorised backward passes
(a transposed product), unlike advanced indexing, whose backward is a scatter-add.
Conformations are laid out as columns: (N, s B) for N particles in s dimensions.
"""
from __future__ import annotations

import numpy as np
import torch


class LinearOperator:
    """A fixed (K, N) matrix applied to (N, M) columns: dense for small systems, sparse CSR above.

    Built once from COO triplets; converted once per (dtype, device) and cached.
    """

    DENSE_LIMIT = 4_000_000

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]):
        self.rows, self.cols, self.vals, self.shape = rows, cols, vals, shape
        self._cache: dict = {}

    def matrix(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._cache:
            idx = torch.as_tensor(np.stack([self.rows, self.cols]), dtype=torch.int64)
            m = torch.sparse_coo_tensor(idx, torch.as_tensor(self.vals, dtype=dtype), self.shape,
                                        check_invariants=True).coalesce()
            m = m.to_dense() if self.shape[0] * self.shape[1] <= self.DENSE_LIMIT else m.to_sparse_csr()
            self._cache[key] = m.to(device)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.matrix(x.dtype, x.device)
        return m @ x if m.layout == torch.strided else torch.sparse.mm(m, x)


def difference_operator(pairs: list[np.ndarray], n: int) -> LinearOperator:
    """Rows x[j] - x[i] for each (i, j) in the concatenated (K, 2) index arrays."""
    ij = np.concatenate([np.asarray(q, dtype=np.int64).reshape(-1, 2) for q in pairs])
    k = np.arange(len(ij))
    return LinearOperator(np.concatenate([k, k]), np.concatenate([ij[:, 1], ij[:, 0]]),
                          np.concatenate([np.ones(len(ij)), -np.ones(len(ij))]), (len(ij), n))


def selection_operator(index: np.ndarray, n: int) -> LinearOperator:
    """Rows x[index[k]] (a gather)."""
    k = np.arange(len(index))
    return LinearOperator(k, np.asarray(index, dtype=np.int64), np.ones(len(index)), (len(index), n))
