"""Data-parallel training and sharded sampling on torch.distributed.

A run of N processes is launched by torch.distributed's own launcher: ``molsample train CONFIG
--nproc N`` (one machine) calls it in-process, and ``torchrun ... -m molsample train CONFIG`` is the
same launch written out (several machines). Each process is one *rank*; it finds its rank, the world
size and its local rank in the environment the launcher sets, joins the process group (gloo on the
CPU, NCCL on GPUs, one GPU per local rank) with a timeout, and from then on:

* draws its own part of the global batch (``train.batch / N`` rows) from its own generator, seeded by
  :func:`stream_seed` (rank 0 keeps the config's seed, so one process is the plain run);
* averages every gradient over the ranks before it is clipped (:meth:`Group.average_`: one
  ``all_reduce`` of the flattened gradients, the collective DistributedDataParallel issues). The
  trainers do this themselves rather than wrap the network in ``DistributedDataParallel``, because
  one iteration differentiates the network several times (Jacobian-vector products, power
  iterations, a backward pass per loss for per-loss clipping), which DDP's one-forward-one-backward
  hooks do not follow;
* takes the same optimiser step, so parameters and the EMA teacher stay identical on every rank;
* agrees with the others on every decision that changes control flow (skip a non-finite batch, stop
  on a signal) by a collective, so no rank waits in a collective the others never enter.

Rank 0 alone evaluates, logs, draws the progress bar and writes checkpoints (atomically, with every
rank's generator state, so ``--resume`` restores each rank's stream). A rank that dies takes the run
down: the launcher stops the others and :func:`launch` names the rank; a rank that hangs is ended by
the process group's timeout. The last checkpoint is the one before the failure and loads as usual.
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from .io import InputError

DEFAULT_TIMEOUT_S = 900.0


class RankFailed(RuntimeError):
    """A rank of a multi-process run exited with an error or was killed."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank, world size, local rank (one process: 0, 1, 0)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    # ---------------------------------------------------------------- collectives (no-ops for one process)
    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor in place by its mean over the ranks (one all_reduce of them all, flattened)."""
        if not self.parallel or not tensors:
            return
        import torch.distributed as dist
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def average_gradients_(self, params: list[torch.Tensor]) -> None:
        """Give every parameter a gradient (zeros where its backward pass left none, so that every rank
        reduces the same tensors) and average them over the ranks: the gradient of the global batch."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.average_([p.grad for p in params])

    def _reduce(self, values: list[float], op) -> list[float]:
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t, op=op)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is true on every rank."""
        if not self.parallel:
            return bool(flag)
        import torch.distributed as dist
        return self._reduce([1.0 if flag else 0.0], dist.ReduceOp.MIN)[0] > 0.5

    def any_true(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is true on some rank."""
        return not self.all_true(not flag)

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (non-finite anywhere: non-finite)."""
        if not self.parallel:
            return float(value)
        import torch.distributed as dist
        return self._reduce([float(value)], dist.ReduceOp.SUM)[0] / self.world

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0; None on the others."""
        if not self.parallel:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.parallel:
            return obj
        import torch.distributed as dist
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module``."""
        if not self.parallel:
            return
        import torch.distributed as dist
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def split(self, n: int, what: str) -> int:
        """This rank's share of ``n`` rows (``n`` must be a multiple of the world size)."""
        if n % self.world:
            raise InputError(f"{what} = {n} does not split over {self.world} processes; make it a multiple of "
                             f"{self.world}")
        return n // self.world


SINGLE = Group()


def _collective_device() -> torch.device:
    import torch.distributed as dist
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched() -> bool:
    """Whether this process is one rank of a multi-process launch (torchrun / ``--nproc``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Group:
    """The group this process joined with :func:`init` (one process when none)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Group, torch.device]:
    """Join the process group of a launch (no-op in a single process). Returns the group and this
    rank's device: on CUDA the GPU of its local rank, with NCCL; on the CPU gloo."""
    if not launched():
        return SINGLE, device
    import torch.distributed as dist
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed; run in one process (without --nproc)")
    if dist.is_initialized():
        return current(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise InputError(f"--device {device}: under several processes give --device cuda; each process takes "
                             "the GPU of its local rank")
        if local >= torch.cuda.device_count():
            raise InputError(f"local rank {local}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "start at most one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current(), device


def finish() -> None:
    """Leave the process group (if one was joined)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stream_seed(seed: int, index: int) -> int:
    """The seed of random stream ``index`` of a run seeded ``seed``: ``seed`` itself for index 0, for
    other indices a number drawn from numpy's SeedSequence of (seed, index), so that streams of
    different ranks or sample blocks do not overlap as ``seed + index`` would with a neighbouring seed."""
    if index == 0:
        return int(seed)
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1])


def restore_stream(gen: torch.Generator, ckpt: dict, path, group: Group, every: str, one: str) -> None:
    """Set ``gen`` to this rank's generator state from a checkpoint that holds every rank's under ``every``
    (older, single-process checkpoints: one state under ``one``). A run resumes on the number of processes
    it was trained on, since each continues its own stream; another number is an InputError naming it."""
    world = int(ckpt.get("world_size", 1))
    if world != group.world:
        raise InputError(f"{path}: the run was trained on {world} process(es); resume it on {world} (--nproc "
                         f"{world}) so that every rank continues its own random stream")
    gen.set_state(ckpt[every][group.rank] if every in ckpt else ckpt[one])


def launch(nproc: int, argv: list[str], what: str = "run") -> None:
    """Run ``python -m molsample ARGV`` as ``nproc`` ranks on this machine through
    torch.distributed's elastic launcher (no restarts). Returns when all ranks exit 0; raises
    :class:`RankFailed` naming the first rank that failed (exit code or signal) otherwise."""
    if launched():
        raise InputError("--nproc: this process is already one rank of a torchrun launch; leave --nproc out")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    # torchrun would set one thread per rank and print a banner saying so; share the cores out instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)     # the agent's own log lines are not the user's
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    try:
        elastic_launch(config, sys.executable)("-m", "molsample", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        raise RankFailed(f"rank {rank} of {nproc} {how}; the {what} stopped on every rank") from None


SAMPLE_BLOCK = 8192          # draws per random stream of a sampling run (the unit that is shared out)


def blocks(n: int, group: Group = SINGLE, block: int = SAMPLE_BLOCK) -> list[tuple[int, int]]:
    """(index, size) of the blocks of n draws that this rank owns: blocks r, r + N, ... of ``block`` draws."""
    return [(b, min(block, n - b * block)) for b in range(-(-n // block))][group.rank::group.world]


def draw_in_blocks(n: int, seed: int, draw, group: Group = SINGLE, block: int = SAMPLE_BLOCK) -> list | None:
    """``draw(m, generator)`` for the blocks of n draws that this rank owns, gathered on rank 0 in
    block order (None on the other ranks). Block b has b x ``block`` draws before it and its own
    generator, seeded by :func:`stream_seed` (seed, b), so the output depends on ``n`` and ``seed``
    alone: one process and any number of ranks give the same draws (rank r takes blocks r, r + N, ...)."""
    mine = [(b, draw(m, torch.Generator().manual_seed(stream_seed(seed, b)))) for b, m in blocks(n, group, block)]
    parts = group.gather(mine)
    if parts is None:
        return None
    return [r for _, r in sorted((item for part in parts for item in part), key=lambda item: item[0])]
