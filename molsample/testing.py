"""Reusable checks for tests of molsample and of code built on it: Haar-random orthogonal matrices and an
equivariance assertion for maps of particle positions (the pattern of e3nn's ``assert_equivariant``)."""
from __future__ import annotations

import typing

import torch


def random_orthogonal(generator: torch.Generator, dim: int = 3, batch: int | None = None, reflect: bool = False,
                      dtype=torch.float64) -> torch.Tensor:
    """Haar-distributed rotations of SO(dim), (dim, dim) or (batch, dim, dim); ``reflect`` composes each with a
    reflection (det -1). Drawn in float64 and cast to ``dtype``."""
    shape = (batch, dim, dim) if batch is not None else (dim, dim)
    q, r = torch.linalg.qr(torch.randn(*shape, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    q = q * torch.sign(torch.linalg.det(q))[..., None, None]                 # det +1
    if reflect:
        q[..., :, 0] = -q[..., :, 0]
    return q.to(dtype)


def assert_equivariant(fn: typing.Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       generator: torch.Generator, tol: float, output: str = "vector",
                       reflections: bool = True, translations: bool = True,
                       permutation: torch.Tensor | None = None) -> None:
    """Assert that ``fn`` maps positions x (B, N, s) equivariantly: under x -> x Q^T (rotations, and
    reflections if asked), x -> x + c and a permutation of the particles, a ``vector`` output (B, N, s)
    transforms the same way (translations leave it unchanged) and a ``scalar`` output (B, ...) is unchanged.
    Errors are relative to the output's largest entry; the message names the symmetry that failed."""
    s = x.shape[-1]
    out = fn(x)
    scale = out.detach().abs().max().clamp_min(1e-30)

    def check(name, got, want):
        err = float(((got - want).abs().max() / scale).detach())
        assert err < tol, f"not equivariant under {name}: relative error {err:.3g} (tolerance {tol:g})"

    for reflect in ((False, True) if reflections else (False,)):
        q = random_orthogonal(generator, s, reflect=reflect, dtype=x.dtype)
        check("reflection" if reflect else "rotation", fn(x @ q.T), out @ q.T if output == "vector" else out)
    if translations:
        shift = (torch.randn(1, 1, s, generator=generator, dtype=torch.float64) * 5).to(x.dtype)
        check("translation", fn(x + shift), out)
    if permutation is not None:
        check("permutation", fn(x[:, permutation]), out[:, permutation] if output == "vector" else out)
