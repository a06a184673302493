"""Data-parallel training and sharded sampling on torch.distributed (gloo, 2 CPU processes): a step
on the global batch split over two ranks is the step of one process on the concatenated batch;
parameters and EMA stay identical on every rank; a 2-rank run resumes bit for bit; sharded samples
are the single-process samples; a killed rank ends the run with a message naming it."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from molsample.build import build
from molsample.config import ExperimentConfig
from molsample.distributed import SINGLE, Group, stream_seed
from molsample.testing import run_ranks
from molsample.train import CHECKPOINT, Trainer, load_checkpoint

from conftest import ROOT

TINY_GMM = ROOT / "configs" / "tiny-gmm.yaml"
TINY_DATA = ROOT / "configs" / "tiny-aldp-data.yaml"
MD = ROOT / "systems/aldp/reference/aldp_md_2x50ns.npz"
# float64, no OT coupling (a coupling is computed within each rank's rows) and no Hutchinson probes (drawn
# inside the loss), equal frame weights (every shard holds the same share of the weight)
DATA_SET = ["dtype=float64", "data.ot_coupling=false", "train.distill.volume_weight=0", "train.distill.jacobian_weight=0",
            "data.weight_power=0", "train.batch=16", "train.distill.batch=8"]


def _env():
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "molsample", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_close(a: dict, b: dict, tol: float):
    assert a.keys() == b.keys()
    for k in a:
        err = float((a[k] - b[k]).abs().max())
        scale = float(b[k].abs().max()) + 1e-30
        assert err <= tol * max(scale, 1.0), (k, err, scale)


class _Offline(Group):
    """A rank's place without a process group: builds what that rank would build (its shard, its batch
    share), with no collective to wait on."""

    def broadcast_module_(self, module):
        pass


def test_stream_seeds_keep_rank_0_and_separate_the_others():
    assert stream_seed(7, 0) == 7
    seeds = {stream_seed(7, r) for r in range(8)} | {stream_seed(8, r) for r in range(8)}
    assert len(seeds) == 16                      # no two streams of neighbouring seeds coincide


# ------------------------------------------------------------------ the data route, one step
def _data_rank(group: Group, out: str):
    cfg = ExperimentConfig.load(TINY_DATA, DATA_SET)
    trainer = Trainer(build(cfg), Path(out) / f"rank{group.rank}", progress=False, group=group)
    assert trainer.route.scale == pytest.approx(1.0, abs=1e-12)
    trainer.step()
    torch.save({"grad": _grads(trainer.exp.model), "param": _params(trainer.exp.model),
                "ema": _params(trainer.ema)}, Path(out) / f"rank{group.rank}.pt")


def test_data_route_step_split_over_two_ranks_is_the_step_on_the_concatenated_batch(tmp_path):
    run_ranks(_data_rank, 2, tmp_path, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("grad", "param", "ema"):
        _assert_close(r0[key], r1[key], 0.0)              # identical on both ranks
    # one process, the two ranks' draws concatenated (each rank shards the frames: rows r::2)
    cfg = ExperimentConfig.load(TINY_DATA, DATA_SET)
    parts = []
    for rank in (0, 1):
        tr = Trainer(build(cfg), tmp_path / f"ref{rank}", progress=False, group=_Offline(rank, 2, rank))
        parts.append(tr.draw(tr.cfg.batch, torch.Generator().manual_seed(stream_seed(cfg.seed, rank))))
    ref = Trainer(build(cfg), tmp_path / "ref", progress=False)
    batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    assert len(batch["x0"]) == cfg.train.batch
    base, rest, logs = ref.batch_losses(batch)
    assert ref.clipped_sum_of_gradients((base + rest,), (None,), logs)
    _assert_close(r0["grad"], _grads(ref.exp.model), 1e-6)
    ref.opt.step()
    _assert_close(r0["param"], _params(ref.exp.model), 1e-6)


# ------------------------------------------------------------------ the energy route, a few iterations
def _energy_rank(group: Group, out: str, iterations: int):
    cfg = ExperimentConfig.load(TINY_GMM, ["dtype=float64"])
    trainer = Trainer(build(cfg), Path(out) / f"rank{group.rank}", progress=False, group=group)
    for _ in range(iterations):
        trainer.step()
    torch.save({"grad": _grads(trainer.exp.model), "param": _params(trainer.exp.model),
                "ema": _params(trainer.ema)}, Path(out) / f"e{iterations}_rank{group.rank}.pt")


def test_energy_route_ranks_stay_identical_and_average_their_gradients(tmp_path):
    run_ranks(_energy_rank, 2, tmp_path, str(tmp_path), 3)
    r0, r1 = (torch.load(tmp_path / f"e3_rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("param", "ema"):
        _assert_close(r0[key], r1[key], 0.0)
    # the first step's gradient is the mean of the two ranks' own gradients (paths are simulated per rank)
    run_ranks(_energy_rank, 2, tmp_path, str(tmp_path), 1)
    g = torch.load(tmp_path / "e1_rank0.pt", weights_only=True)["grad"]
    cfg = ExperimentConfig.load(TINY_GMM, ["dtype=float64"])
    assert not cfg.train.clip_per_loss
    per_rank = []
    for rank in (0, 1):                                  # each rank's own, unclipped gradient
        tr = Trainer(build(cfg), tmp_path / f"single{rank}", progress=False, group=_Offline(rank, 2, rank))
        tr.group = SINGLE
        base, rest, logs = tr.losses()
        (base + rest).backward()
        per_rank.append(_grads(tr.exp.model))
    mean = {k: 0.5 * (per_rank[0][k] + per_rank[1][k]) for k in g}
    norm = float(torch.sqrt(sum((v ** 2).sum() for v in mean.values())))
    coef = min(1.0, cfg.train.grad_clip / (norm + 1e-6))   # the run clips the averaged gradient (torch's rule)
    _assert_close(g, {k: v * coef for k, v in mean.items()}, 1e-6)


# ------------------------------------------------------------------ the internal-coordinate route, one step
def _ic_cfg():
    from molsample.coords.model import ICExperimentConfig
    from molsample.config import from_dict
    return from_dict(ICExperimentConfig, {"route": "internal", "target": "aldp", "data": {"paths": [str(MD)]},
                                          "map": {"hidden": 16}, "train": {"batch": 16}}, "test")


def _ic_rank(group: Group, out: str):
    from molsample.coords.model import build_sampler
    from molsample.coords.training import train_step
    cfg = _ic_cfg()
    sampler = build_sampler(cfg, generator=torch.Generator().manual_seed(1))
    sampler.flow.double()
    for p in sampler.flow.parameters():                  # off the identity, so that the gradient is generic
        torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(sampler.flow.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, group.rank))
    train_step(sampler, opt, replace(cfg.train, grad_clip=1e9), cfg.train.batch // group.world, gen, group)
    torch.save({"grad": _grads(sampler.flow), "param": _params(sampler.flow)}, Path(out) / f"ic{group.rank}.pt")


def test_internal_route_step_split_over_two_ranks_is_the_step_on_the_concatenated_batch(tmp_path):
    from molsample.coords.model import build_sampler
    run_ranks(_ic_rank, 2, tmp_path, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"ic{r}.pt", weights_only=True) for r in (0, 1))
    _assert_close(r0["param"], r1["param"], 0.0)
    cfg = _ic_cfg()
    sampler = build_sampler(cfg, generator=torch.Generator().manual_seed(1))
    sampler.flow.double()
    for p in sampler.flow.parameters():
        torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(2))
    lat = [sampler.one_step.latent(8, torch.Generator().manual_seed(stream_seed(cfg.seed, r))) for r in (0, 1)]
    latent = (torch.cat([z for z, _ in lat]), torch.cat([lp for _, lp in lat]))
    loss, logs = sampler.one_step.reverse_kl(16, None, cfg.train.energy_cap, latent=latent)
    assert logs["left_out"] == 0
    loss.backward()
    _assert_close(r0["grad"], _grads(sampler.flow), 1e-6)


# ------------------------------------------------------------------ through the command line (torch's launcher)
def test_two_rank_run_resumes_bit_for_bit_and_its_checkpoint_loads_in_one_process(tmp_path):
    common = ["--set", "train.eval_every=100", "--quiet", "--nproc", "2"]
    straight = _cli("train", TINY_GMM, "--out", tmp_path / "straight", "--iterations", 6, *common)
    assert straight.returncode == 0, straight.stderr
    first = _cli("train", TINY_GMM, "--out", tmp_path / "split", "--iterations", 3, *common)
    assert first.returncode == 0, first.stderr
    second = _cli("train", TINY_GMM, "--out", tmp_path / "split", "--iterations", 6, "--resume", *common)
    assert second.returncode == 0, second.stderr
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    assert a["world_size"] == b["world_size"] == 2 and len(a["generators"]) == 2
    assert not torch.equal(a["generators"][0], a["generators"][1])    # each rank has its own stream
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(x, y) for x, y in zip(a["generators"], b["generators"]))
    exp, ckpt = load_checkpoint(tmp_path / "split" / CHECKPOINT)      # one process reads a 2-rank checkpoint
    assert ckpt["state"]["iteration"] == 6
    # resuming on another number of processes is refused with a clear message
    wrong = _cli("train", TINY_GMM, "--out", tmp_path / "split", "--iterations", 8, "--resume", *common[:3])
    assert wrong.returncode == 2 and "trained on 2 process(es)" in wrong.stderr and "Traceback" not in wrong.stderr
    # a batch that does not split is refused before any rank starts
    odd = _cli("train", TINY_GMM, "--out", tmp_path / "odd", "--nproc", 3, "--quiet")
    assert odd.returncode == 2 and "does not split over 3 processes" in odd.stderr


def test_sharded_sampling_writes_the_single_process_file(tmp_path):
    model = ROOT / "systems/aldp/models/aldp-ic.pt"
    one = _cli("sample", model, "--n", 9000, "--seed", 3, "--out", tmp_path / "one.npz")
    two = _cli("sample", model, "--n", 9000, "--seed", 3, "--out", tmp_path / "two.npz", "--nproc", 2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        for key in ("x", "log_q", "log_w"):
            assert np.array_equal(a[key], b[key]), key
        assert json.loads(str(b["meta"]))["processes"] == 2
        assert len(np.unique(a["log_w"])) == 9000              # blocks are different draws, not copies


def test_sharded_cartesian_sampling_writes_the_single_process_file(tmp_path):
    run = tmp_path / "run"
    assert _cli("train", TINY_GMM, "--out", run, "--iterations", 2, "--quiet").returncode == 0
    one = _cli("sample", run / CHECKPOINT, "--n", 9000, "--out", tmp_path / "one.npz", "--batch-size", 2048)
    two = _cli("sample", run / CHECKPOINT, "--n", 9000, "--out", tmp_path / "two.npz", "--batch-size", 2048,
               "--nproc", 2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        for key in ("x", "log_q", "log_w", "log_prob"):
            assert np.array_equal(a[key], b[key]), key


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the ranks")
def test_a_killed_rank_ends_the_run_with_a_message_naming_it_and_a_checkpoint_that_loads(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "molsample", "train", str(TINY_GMM), "--out", str(out),
                             "--iterations", "100000", "--set", "train.checkpoint_every=5", "--set",
                             "train.eval_every=100000", "--quiet", "--nproc", "2", "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not (out / CHECKPOINT).is_file():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
            time.sleep(0.2)
        ranks = {}
        while 1 not in ranks:
            ranks = {_rank_of(c): c for c in _children(proc.pid)}
            assert time.time() < deadline
            time.sleep(0.1)
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        assert time.time() - t0 < 30                     # well within the process-group timeout: no hang
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None)
    assert "rank 1 of 2 was killed by SIGKILL" in err and "continue with --resume --nproc 2" in err
    assert "Traceback" not in err
    exp, ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["state"]["iteration"] >= 5 and ckpt["state"]["iteration"] % 5 == 0


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_ranks_on_two_gpus_train_and_resume(tmp_path):
    common = ["--set", "train.eval_every=100", "--quiet", "--nproc", "2", "--device", "cuda"]
    first = _cli("train", TINY_GMM, "--out", tmp_path / "gpu", "--iterations", 3, *common)
    assert first.returncode == 0, first.stderr
    second = _cli("train", TINY_GMM, "--out", tmp_path / "gpu", "--iterations", 6, "--resume", *common)
    assert second.returncode == 0, second.stderr
    exp, ckpt = load_checkpoint(tmp_path / "gpu" / CHECKPOINT)
    assert ckpt["state"]["iteration"] == 6 and ckpt["world_size"] == 2


@pytest.mark.cuda
def test_one_rank_per_gpu_samples_the_single_process_file(tmp_path):
    run = tmp_path / "run"
    assert _cli("train", TINY_GMM, "--out", run, "--iterations", 2, "--quiet", "--device", "cuda").returncode == 0
    n = max(torch.cuda.device_count(), 1)
    one = _cli("sample", run / CHECKPOINT, "--n", 9000, "--out", tmp_path / "one.npz", "--device", "cuda")
    many = _cli("sample", run / CHECKPOINT, "--n", 9000, "--out", tmp_path / "many.npz", "--device", "cuda",
                "--nproc", n)
    assert one.returncode == 0 and many.returncode == 0, many.stderr
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "many.npz") as b:
        assert np.allclose(a["log_w"], b["log_w"], rtol=1e-5, atol=1e-5)
