"""molsample.align: the minibatch OT coupling and the alignment of frames within their symmetry orbit."""
import pytest
import torch

from molsample import align
from molsample.testing import random_orthogonal


def test_ot_coupling_is_a_permutation_that_lowers_the_cost():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(64, 4, 3, generator=g), torch.randn(64, 4, 3, generator=g) + 1.0
    y0 = align.ot_coupling(x0, x1)
    assert torch.equal(torch.sort(y0.reshape(64, -1), dim=0)[0], torch.sort(x0.reshape(64, -1), dim=0)[0])
    assert (y0 - x1).pow(2).sum() < (x0 - x1).pow(2).sum()


def _random_rotations(n, g):
    return random_orthogonal(g, 3, batch=n)                            # Haar on SO(3)


def _sorted_pair_distances(x):
    return torch.sort(torch.cdist(x, x).reshape(x.shape[0], -1), dim=1)[0]


@pytest.mark.parametrize("permute", [False, True])
def test_align_pairs_moves_within_the_orbit_and_shortens_the_coupling(permute):
    g = torch.Generator().manual_seed(3)
    n = 6
    x0 = torch.randn(64, n, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(1, keepdim=True)
    # x1: a rotated (and relabelled) copy of x0 plus small noise; alignment must undo the move
    rot = _random_rotations(64, g)
    perm = (torch.stack([torch.randperm(n, generator=g) for _ in range(64)]) if permute
            else torch.arange(n).expand(64, n))
    noisy = x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x1 = torch.gather(noisy @ rot, 1, perm[..., None].expand(-1, -1, 3)) + 2.0      # off-centre on purpose
    out = align.align_pairs(x0, x1, permute=permute)
    assert torch.allclose(out.mean(1), x1.mean(1))                                  # centroid kept
    assert torch.allclose(_sorted_pair_distances(out), _sorted_pair_distances(x1))  # same shape (orbit)
    c_in, c_out = x1 - x1.mean(1, keepdim=True), out - out.mean(1, keepdim=True)
    if not permute:                                                             # a proper rotation of x1
        r = torch.linalg.lstsq(c_in, c_out).solution
        assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-8)
        assert torch.allclose(torch.linalg.det(r), torch.ones(64, dtype=torch.float64))
    assert (out - 2.0 - noisy).pow(2).sum((1, 2)).max() < 0.05**2 * 3 * n * 4       # recovered up to the noise
    assert (out - 2.0 - x0).pow(2).sum() < 0.2 * (x1 - 2.0 - x0).pow(2).sum()


def test_align_pairs_keeps_the_target_distribution():
    # data: the orbit of ONE asymmetric configuration c under rotations and relabelling (an invariant target).
    # Aligned to isotropic prior partners, particle 0 must still be each of c's particles equally often and
    # point in no preferred direction; a start that favoured the given labels would break both.
    g = torch.Generator().manual_seed(4)
    n, m = 5, 8000
    c = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 1.6, 0], [0, 0, 2.3], [1.1, 1.2, 1.3]], dtype=torch.float64)
    c = c - c.mean(0)
    x1 = c.expand(m, n, 3).clone()
    x0 = torch.randn(m, n, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(1, keepdim=True)
    out = align.align_pairs(x0, x1, permute=True)
    which = torch.cdist(out[:, 0:1, :].norm(dim=-1, keepdim=True), c.norm(dim=-1)[:, None]).squeeze(1).argmin(-1)
    share = torch.bincount(which, minlength=n).double() / m
    assert torch.allclose(share, torch.full((n,), 1.0 / n, dtype=torch.float64), atol=0.015), share
    assert out[:, 0, :].mean(0).abs().max() < 0.05
    cov = torch.cov(out[:, 0, :].T)
    assert torch.allclose(cov, cov.diagonal().mean() * torch.eye(3, dtype=torch.float64), atol=0.1)


def test_align_pairs_is_equivariant_in_the_prior_partner():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(16, 7, 3, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(1, keepdim=True)
    x1 = torch.randn(16, 7, 3, generator=g, dtype=torch.float64)
    x1 = x1 - x1.mean(1, keepdim=True)
    rot = _random_rotations(16, g)
    perm = torch.stack([torch.randperm(7, generator=g) for _ in range(16)])
    moved = torch.gather(x0 @ rot, 1, perm[..., None].expand(-1, -1, 3))
    a = align.align_pairs(x0, x1, permute=True)
    b = align.align_pairs(moved, x1, permute=True)
    assert torch.allclose(torch.gather(a @ rot, 1, perm[..., None].expand(-1, -1, 3)), b, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("permute", [False, True])
def test_align_pairs_on_cuda_matches_cpu(permute):
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(16, 6, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(16, 6, 3, generator=g, dtype=torch.float64)
    out = align.align_pairs(x0.cuda(), x1.cuda().float(), permute=permute)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.allclose(out.cpu().double(), align.align_pairs(x0, x1, permute=permute), atol=1e-5)
