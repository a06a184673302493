"""Reusable checks for tests of molsample and of code built on it: Haar-random orthogonal matrices, an
equivariance assertion for maps of particle positions (the pattern of e3nn's ``assert_equivariant``), the
analytic linear flows whose steps, log-determinants and consistency losses are known in closed form, and slow
reference Jacobians."""
from __future__ import annotations

import typing

import torch

from .flow import Velocity


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


# ------------------------------------------------------------------ analytic flows and slow references

def _default_schedule():
    from .flow import CosineSchedule
    return CosineSchedule(s0=2.0)


def small_drift(space, target, seed: int = 0, dtype=torch.float64, std: float = 0.3, schedule=None):
    """A small Langevin-preconditioned MLP drift with a non-zero output layer (so its Jacobian is not trivial),
    wrapped as the probability-flow velocity of ``schedule`` (default CosineSchedule(s0=2))."""
    from .flow import DriftVelocity, Prior
    from .nn import LangevinDrift, MLPCore
    schedule = schedule or _default_schedule()
    torch.manual_seed(seed)
    core = MLPCore(space, hidden=32, layers=2, n_base=8)
    for p in core.out.parameters():
        torch.nn.init.normal_(p, std=std)
    drift = LangevinDrift(core, target, Prior(space, schedule.s0), schedule, clip=1e3, n_base=8).to(dtype)
    return DriftVelocity(drift, schedule)


def dense_step_jacobian(velocity, x: torch.Tensor, t, d, space) -> torch.Tensor:
    """Slow reference: the full autograd Jacobian of each sample's deterministic step, restricted to ``space``
    (B, D, D), for checking the fast exact log-determinants."""
    from .flow import pf_step
    q = space.basis(torch.float64)
    out = []
    for xi in x:
        f = lambda y: pf_step(velocity, y.reshape(1, *space.event_shape), t, d).reshape(-1)
        j = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        out.append(q.T @ j @ q)
    return torch.stack(out)


class ExactLinearFlow(Velocity):
    """b = (exp(0.5 int_t^{t+d} beta) - 1) x / d: the exact flow map of dx/dt = 0.5 beta x (self-consistent
    at every step size)."""

    def __init__(self, schedule=None):
        self.schedule = schedule or _default_schedule()

    def __call__(self, x, t, d, **kw):
        t, d = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]), torch.as_tensor(d, dtype=x.dtype).expand(x.shape[0])
        g = torch.expm1(0.5 * self.schedule.int_beta(t, t + d)) / d
        return g.reshape(-1, *([1] * (x.dim() - 1))) * x


class EulerLinearFlow(Velocity):
    """b = 0.5 beta(t) x, independent of the step size (its self-consistency error is second order in d)."""

    def __init__(self, schedule=None):
        self.schedule = schedule or _default_schedule()

    def __call__(self, x, t, d, **kw):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return 0.5 * self.schedule.beta(t).reshape(-1, *([1] * (x.dim() - 1))) * x


class RandomLinearFlow(Velocity):
    """b = M(t) x with a fixed random non-symmetric matrix family M(t) = A + t C: x_K = L x_0 exactly."""

    def __init__(self, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.15
        self.c = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.15

    def matrix(self, t):
        return self.a + t * self.c

    def __call__(self, x, t, d, **kw):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        m = self.a[None] + t[:, None, None] * self.c[None]
        return torch.einsum("bij,bj->bi", m, x)


class LinearVelocity(Velocity):
    """b(x) = A_n x with a different matrix per sample (no linear rate)."""

    def __init__(self, a: torch.Tensor):
        self.a = a

    def __call__(self, x, t, d, **kw):
        return torch.einsum("nij,nj->ni", self.a, x)

    def linear_rate(self, t):
        return torch.zeros_like(t)


def run_ranks(fn: typing.Callable, world: int, workdir, *args) -> None:
    """Call ``fn(group, *args)`` in ``world`` fresh processes joined in a gloo process group (a file
    store in ``workdir``), as the ranks of a multi-process run; ``fn`` must be importable (a module-level
    function). Raises if any rank fails."""
    import os
    from pathlib import Path

    import torch.multiprocessing as mp
    store = Path(workdir) / "process-group-store"
    if store.exists():
        store.unlink()
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_rank_entry, args=(world, str(store), fn, args), nprocs=world, join=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _rank_entry(rank: int, world: int, store: str, fn, args) -> None:
    import datetime
    import os

    import torch.distributed as dist

    from .distributed import Group
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        fn(Group(rank, world, rank), *args)
    finally:
        dist.destroy_process_group()
