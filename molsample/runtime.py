"""Guards for long runs: Ctrl-C that stops at a safe point, one writer per output, and checks of
devices and OpenMM platforms before any work starts."""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path

from .io import InputError


class Interrupted(Exception):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM after saving what it had; the message says how to continue."""


class StopFlag:
    """Set by SIGINT / SIGTERM while installed (see :func:`stop_on_signal`); a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_on_signal():
    """Within the block, SIGINT and SIGTERM set the returned flag instead of raising, so a loop can
    finish its step, write its checkpoint and raise :class:`Interrupted`. A second SIGINT raises
    KeyboardInterrupt as usual. Outside the main thread this is a no-op flag."""
    import threading

    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class RunLock:
    """An exclusive lock on ``path`` (flock; released by the kernel when the process ends, so a run
    killed with kill -9 leaves nothing that blocks its --resume). A second run on the same output
    is refused with a message naming the process that holds it."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise InputError(f"{self.what} is in use by a run that is still going (process {holder}, lock "
                             f"{self.path}); wait for it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_device(name: str, flag: str = "--device"):
    """The torch device ``name`` if it exists on this machine, else :class:`InputError`."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{flag} {name!r}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"{flag} {name}: no CUDA device is available here (torch {torch.__version__}, "
                             f"{build}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise InputError(f"{flag} {name}: molsample runs on cpu or cuda devices")
    return device


def check_platform(name: str, flag: str = "--platform") -> str:
    """``name`` if OpenMM has that platform on this machine, else :class:`InputError` listing those it has."""
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name not in names:
        raise InputError(f"{flag} {name}: OpenMM has no such platform on this machine; available: "
                         f"{', '.join(names)}")
    return name


class _Lines:
    """A stream for tqdm when stderr is a file or a pipe: each refresh becomes one plain line (no carriage
    returns or cursor movements), so a log file reads line by line."""

    def __init__(self, stream):
        import re
        self.stream = stream
        self._ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def write(self, s: str) -> None:
        s = self._ansi.sub("", s.replace("\r", "\n"))
        for line in s.split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, total=None, desc: str | None = None, enabled: bool = True,
                 file_interval: float = 30.0, **kwargs):
    """A tqdm progress bar on stderr: live on a terminal; in a file or pipe one line every ``file_interval``
    seconds (and at the end), postfix updates included without forcing extra lines."""
    import sys

    from tqdm import tqdm

    tty = sys.stderr.isatty()

    class _Bar(tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kw):
            super().set_postfix(ordered_dict, refresh=refresh and tty, **kw)

    if tty:
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("mininterval", 1.0)
    else:
        kwargs.pop("dynamic_ncols", None)
        kwargs.update(file=_Lines(sys.stderr), mininterval=file_interval, ncols=110)
    return _Bar(iterable, total=total, desc=desc, disable=not enabled, **kwargs)
