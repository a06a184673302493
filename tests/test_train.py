"""Training loop: checkpoints, resume bit-for-bit, non-finite handling, CLI train -> sample -> estimate."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from molsample import jacobian, sde
from molsample.cli import main
from molsample.config import ConfigError, ExperimentConfig
from molsample.train import (CHECKPOINT, Trainer, TrainingDiverged, build, learning_rate, load_checkpoint,
                             make_trainer, train)

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-gmm.yaml"


def tiny(iterations=8, *sets, **train_kw):
    """The tiny config; ``sets`` are --set strings (section.key=value), ``train_kw`` top-level train keys."""
    cfg = ExperimentConfig.load(TINY, sets)
    return replace(cfg, train=replace(cfg.train, iterations=iterations, checkpoint_every=4, eval_every=4, **train_kw))


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    train(tiny(), tmp_path, progress=False)
    exp, ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt["state"]["iteration"] == 8 and ckpt["config"] == tiny().to_dict()
    for name, value in exp.model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][name])
    assert not (tmp_path / (CHECKPOINT + ".tmp")).exists()


def test_resume_continues_bit_for_bit(tmp_path):
    train(tiny(8), tmp_path / "straight", progress=False)
    train(tiny(4), tmp_path / "split", progress=False)                # "killed" after 4 iterations
    with pytest.raises(ValueError, match="different config"):          # any key but the length is fixed
        Trainer(build(tiny(8, "train.lr.value=1e-4")), tmp_path / "split", progress=False).run(resume=True)
    train(tiny(4), tmp_path / "split", progress=False, resume=True, iterations=8)   # extended to 8 iterations
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["state"]["iteration"] == b["state"]["iteration"] == 8
    assert b["config"]["train"]["iterations"] == 8                     # the checkpoint records the new length


def test_cosine_learning_rate_decays_and_resumes_after_a_kill(tmp_path):
    cfg = tiny(8, "train.lr.schedule=cosine", "train.lr.decay_start=4", "train.lr.final=1e-5")
    lr, final = cfg.train.lr.value, cfg.train.lr.final
    values = [learning_rate(cfg.train, i) for i in range(9)]
    assert values[:5] == [lr] * 5                                       # flat until lr.decay_start
    assert values[6] == pytest.approx((lr + final) / 2)                 # half-way through the half cosine
    assert values[8] == pytest.approx(final) and all(a > b for a, b in zip(values[4:], values[5:]))
    assert learning_rate(tiny(8).train, 7) == tiny(8).train.lr.value          # default: constant
    with pytest.raises(ConfigError, match="lr.final"):
        tiny(8, "train.lr.schedule=cosine", "train.lr.final=1.0")

    train(cfg, tmp_path / "straight", progress=False)
    logged = [json.loads(line)["lr"] for line in open(tmp_path / "straight" / "log.jsonl")]
    assert logged == pytest.approx(values[:8])                          # what the optimiser used

    killed = Trainer(build(cfg), tmp_path / "split", progress=False)    # killed at iteration 6: last checkpoint at 4
    real = killed.step

    def step():
        if killed.state.iteration == 6:
            raise KeyboardInterrupt
        return real()
    killed.step = step
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(values[7])


def test_existing_checkpoint_without_resume_is_an_error(tmp_path):
    train(tiny(4), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(4), tmp_path, progress=False)


def test_non_finite_losses_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
    trainer = Trainer(build(tiny(30, max_nonfinite=3)), tmp_path, progress=False)
    real = trainer.losses
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        base, rest, logs = real()
        if calls["n"] in (2, 3) or calls["n"] >= 6:
            return base * float("nan"), rest, {**logs, "loss": float("nan")}
        return base, rest, logs

    monkeypatch.setattr(trainer, "losses", flaky)
    before = {k: v.clone() for k, v in trainer.exp.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="consecutive non-finite"):
        trainer.run()
    assert trainer.state.nonfinite_total == 2 + 4 and trainer.state.iteration == 8
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert ckpt["state"]["iteration"] == 8            # the last good checkpoint is kept
    assert any(not torch.equal(before[k], v) for k, v in trainer.exp.model.state_dict().items())


def test_a_training_path_with_nan_states_is_a_skipped_non_finite_iteration(tmp_path, monkeypatch):
    # a path whose states diverge to NaN makes the target raise; that is counted like a non-finite loss
    trainer = Trainer(build(tiny(30, max_nonfinite=2)), tmp_path, progress=False)
    assert not trainer.step().get("skipped")
    target = trainer.exp.target

    def diverged_path(*args, **kwargs):
        return target.energy(torch.full((2, *target.event_shape), float("nan")))

    monkeypatch.setattr(sde, "simulate_path", diverged_path)
    logs = trainer.step()
    assert logs["skipped"] and "NaN or inf" in logs["nonfinite_states"]
    assert trainer.state.nonfinite_total == 1 and trainer.state.iteration == 2
    trainer.step()
    with pytest.raises(TrainingDiverged, match="3 consecutive non-finite"):
        trainer.step()


@pytest.mark.parametrize("form,states", [("lipschitz", "path"), ("monotone", "path"), ("monotone", "flow")])
def test_bijectivity_hinge_is_trained_and_logged(tmp_path, form, states):
    # a bound no step can meet: the hinge is active, finite and logged at every iteration
    bound = 1e-6 if form == "lipschitz" else 1e6
    train(tiny(4, "train.hinge.weight=1.0", f"train.hinge.form={form}", f"train.hinge.bound={bound}",
               f"train.hinge.states={states}"), tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 4 and all(np.isfinite(r["bij"]) and r["bij"] > 0 for r in logs)
    assert all(("bij_max" if form == "lipschitz" else "bij_min") in r for r in logs)


def test_flow_states_are_where_the_deterministic_sampler_is(tmp_path):
    # each row: a prior draw advanced by t/d steps of size d with the EMA model, vs a per-row loop
    from molsample.flow import pf_step
    trainer = Trainer(build(replace(tiny(), dtype="float64")), tmp_path, progress=False)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.5, 0.0], dtype=torch.float64)
    d = torch.tensor([1.0, 0.25, 0.25, 0.25, 0.5, 0.5], dtype=torch.float64)
    state = trainer.gen.get_state()
    got = trainer.flow_states(t, d)
    trainer.gen.set_state(state)
    x0 = trainer.exp.prior.sample(6, trainer.gen, dtype=torch.float64)
    velocity = trainer.exp.velocity(trainer.ema)
    for i in range(6):
        x = x0[i:i + 1]
        for k in range(round(float(t[i] / d[i]))):
            x = pf_step(velocity, x, k * d[i:i + 1], d[i:i + 1])
        assert torch.allclose(got[i], x[0], rtol=1e-12, atol=1e-12), i
    assert torch.equal(got[0], x0[0]) and not torch.equal(got[3], x0[3])


def test_exploration_noise_needs_the_log_variance_loss(tmp_path):
    with pytest.raises(ConfigError, match="explore_noise"):
        tiny(2, explore_noise=2.0)
    train(tiny(4, diffusion_loss="log-variance", explore_noise=2.0), tmp_path, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["diff"]) and "elbo" not in r for r in logs)


def test_one_step_reverse_kl_on_the_energy_route_uses_the_sampler_weights():
    # the energy route's one-step map (Langevin drift, linear part) through the same loss, float64:
    # per-sample log w equals the K = 1 exact-weight sampler's, and the gradient reaches the network
    from molsample import losses
    from molsample.jacobian import monotonicity
    from molsample.sampler import integrate
    exp = build(replace(tiny(), dtype="float64"))
    g = torch.Generator().manual_seed(0)
    x0 = exp.prior.sample(16, g, dtype=torch.float64)
    velocity = exp.velocity(exp.model)
    loss, log_w, step = losses.one_step_reverse_kl(velocity, exp.prior, exp.target, x0, cap=1e30)
    x, log_q, bad, _, mono, _ = integrate(velocity, exp.prior, x0, 1, "exact")
    u = exp.target.energy(x)
    assert int(bad.sum()) == 0
    assert torch.allclose(monotonicity(step.detach()), mono, rtol=1e-9, atol=1e-10)   # the hinge's Jacobian
    assert torch.allclose(log_w, -u - log_q, rtol=1e-9, atol=1e-8)
    assert torch.isclose(loss, (u + log_q).mean(), rtol=1e-9)
    loss.backward()
    grads = [p.grad for p in exp.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("form", ["monotone", "lipschitz"])
def test_fine_tuning_stage_starts_from_an_earlier_run_and_logs_the_one_step_kl_and_its_hinge(tmp_path, form):
    train(tiny(4), tmp_path / "first", progress=False)
    first = torch.load(tmp_path / "first" / CHECKPOINT, weights_only=False)
    # a monotonicity bound no step meets: the hinge on the KL batch's exact Jacobians is active
    cfg = tiny(2, "train.kl.weight=0.1", "train.kl.batch=8", "train.hinge.weight=1.0", f"train.hinge.form={form}",
               f"train.hinge.bound={1e6 if form == 'monotone' else 1e-6}",
               init_checkpoint=str(tmp_path / "first" / CHECKPOINT))
    trainer = Trainer(build(cfg), tmp_path / "second", progress=False)
    for name, value in trainer.exp.model.state_dict().items():
        assert torch.equal(value, first["ema"][name]), name
    trainer.run()
    logs = [json.loads(line) for line in (tmp_path / "second" / "log.jsonl").read_text().splitlines()]
    key = "kl_bij_min" if form == "monotone" else "kl_bij_max"
    assert all(np.isfinite(r["kl"]) and 0 < r["kl_ess"] <= 1 and r["kl_bij"] > 0 and key in r for r in logs)


def test_cli_train_sample_estimate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(TINY), "--out", str(out), "--quiet", "--iterations", "6",
                 "--set", "train.eval_samples=64"]) == 0
    assert torch.load(out / CHECKPOINT, weights_only=False)["config"]["train"]["eval_samples"] == 64
    for weights in ("exact", "paper"):
        assert main(["sample", str(out / CHECKPOINT), "--n", "300", "--steps", "2", "--weights", weights,
                     "--out", str(tmp_path / f"s_{weights}.npz")]) == 0
    capsys.readouterr()
    assert main(["estimate", str(tmp_path / "s_exact.npz"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    data = np.load(tmp_path / "s_exact.npz")
    assert data["x"].shape == (300, 2) and np.isfinite(data["log_w"]).all()
    assert res["steps"] == 2 and res["weights"] == "exact" and 0 < res["ess"]["value"] <= 1
    assert 0 <= res["fraction_monotone"] <= 1
    assert abs(res["delta_log_z"] - res["log_z"]["value"]) < 1e-12   # gmm40 has log Z = 0
    assert res["prior_draws"] == "independent"
    # --qmc: the prior points are a scrambled Sobol' sequence seeded by --seed; recorded and noted
    for seed in (0, 0, 1):
        assert main(["sample", str(out / CHECKPOINT), "--n", "256", "--steps", "1", "--qmc", "--seed", str(seed),
                     "--out", str(tmp_path / f"q{seed}.npz")]) == 0
    capsys.readouterr()
    assert main(["estimate", str(tmp_path / "q0.npz")]) == 0
    assert "Sobol" in capsys.readouterr().out
    assert json.loads(str(np.load(tmp_path / "q0.npz")["meta"]))["prior_draws"] == "sobol"
    q0, q1 = np.load(tmp_path / "q0.npz")["x"], np.load(tmp_path / "q1.npz")["x"]
    assert np.isfinite(q0).all() and not np.allclose(q0, q1)
    # a non-uniform step schedule: as many evaluations as step sizes, recorded in the file
    assert main(["sample", str(out / CHECKPOINT), "--n", "200", "--steps", "1/2,1/4,1/4",
                 "--out", str(tmp_path / "sched.npz")]) == 0
    meta = json.loads(str(np.load(tmp_path / "sched.npz")["meta"]))
    assert meta["steps"] == 3 and meta["step_sizes"] == [0.5, 0.25, 0.25]
    assert np.isfinite(np.load(tmp_path / "sched.npz")["log_w"]).all()
    assert "warning" not in capsys.readouterr().err                  # dyadic steps: trained ones
    assert main(["sample", str(out / CHECKPOINT), "--n", "20", "--steps", "3", "--out", str(tmp_path / "k3.npz")]) == 0
    assert "not steps the model was trained on" in capsys.readouterr().err
    with pytest.raises(SystemExit):                                  # sizes that do not reach t = 1
        main(["sample", str(out / CHECKPOINT), "--n", "10", "--steps", "1/2,1/4", "--out", str(tmp_path / "x.npz")])
    assert "sum to 1" in capsys.readouterr().err
    assert main(["train", str(TINY), "--out", str(out), "--quiet"]) == 2          # exists, no --resume


@pytest.mark.parametrize("config", ["tiny-gmm.yaml", "tiny-aldp-data.yaml"])
def test_self_consistency_can_be_trained_at_the_samplers_states(tmp_path, config):
    # distill.states: flow: every consistency loss and the hinge see the flow states, drawn once per iteration
    cfg = ExperimentConfig.load(ROOT / "configs" / config,
                                ["train.distill.start=0", "train.distill.states=flow", "train.hinge.weight=1.0",
                                 "train.hinge.form=monotone", "train.hinge.bound=1e6", "train.hinge.states=flow"])
    trainer = make_trainer(build(cfg), tmp_path, progress=False)
    drawn, seen = [], []
    real_states, real_losses = trainer.flow_states, trainer.consistency_losses
    trainer.flow_states = lambda t, d: drawn.append(real_states(t, d)) or drawn[-1]
    trainer.consistency_losses = lambda x, *rest: seen.append(x) or real_losses(x, *rest)
    logs = trainer.step()
    assert len(drawn) == 1 and len(seen) == 1 and seen[0] is drawn[0]
    assert np.isfinite(logs["sd"]) and logs["bij"] > 0
    trainer.step()
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])      # fresh prior draws each iteration


def test_self_consistency_in_the_target_metric_is_trained_and_its_mean_weight_logged(tmp_path):
    cfg = ExperimentConfig.load(TINY, ["train.distill.start=0", "train.distill.metric=target", "train.distill.metric_cap=50"])
    trainer = make_trainer(build(cfg), tmp_path, progress=False)
    logs = trainer.step()
    assert np.isfinite(logs["sd"]) and 0.01 <= logs["sd_w"] <= 50
    with pytest.raises(ConfigError, match="distill.metric_floor = 0.0"):
        ExperimentConfig.load(TINY, ["train.distill.metric=target", "train.distill.metric_floor=0"])


def test_half_the_hinge_states_can_start_from_a_wider_prior(tmp_path, monkeypatch):
    cfg = ExperimentConfig.load(TINY, ["train.distill.start=0", "train.distill.states=flow", "train.hinge.weight=1.0",
                                       "train.hinge.form=monotone", "train.hinge.bound=1e6", "train.hinge.states=flow",
                                       "train.hinge.prior_scale=3.0", "train.distill.batch=64"])
    trainer = make_trainer(build(cfg), tmp_path, progress=False)
    calls, hinged = [], []
    real_states = trainer.flow_states
    trainer.flow_states = lambda t, d, scale=1.0: calls.append((t, d, scale)) or real_states(t, d, scale)
    real_mono = jacobian.step_monotonicity
    monkeypatch.setattr(jacobian, "step_monotonicity", lambda v, x, *rest: hinged.append(x) or real_mono(v, x, *rest))
    logs = trainer.step()
    assert [c[2] for c in calls] == [1.0, 3.0] and len(calls[1][0]) == 32 and logs["bij"] > 0
    assert len(hinged) == 1 and hinged[0].shape[0] == 64
    # rows still at t = 0 are bare prior draws: the wide half is 3x as far out on average
    t = calls[0][0]
    r = hinged[0].norm(dim=1)
    narrow, wide = r[:32][t[:32] == 0], r[32:][t[32:] == 0]
    assert len(narrow) > 3 and len(wide) > 3 and wide.mean() > 2 * narrow.mean()
    with pytest.raises(ConfigError, match="hinge.prior_scale"):
        ExperimentConfig.load(TINY, ["train.hinge.prior_scale=2.0", "train.hinge.states=path"])


def test_the_hinge_can_be_kept_to_the_coarse_steps(tmp_path, monkeypatch):
    base = ["train.distill.start=0", "train.hinge.weight=1.0", "train.hinge.form=monotone", "train.hinge.bound=1e6",
            "train.distill.batch=64"]
    seen = []
    real_mono = jacobian.step_monotonicity
    monkeypatch.setattr(jacobian, "step_monotonicity",
                        lambda v, x, t, d, *rest: seen.append(d.clone()) or real_mono(v, x, t, d, *rest))
    cfg = ExperimentConfig.load(TINY, base)
    make_trainer(build(cfg), tmp_path / "all", progress=False).step()
    assert (seen[-1] < 0.5).any() and len(seen[-1]) == 64                  # all step sizes by default
    cfg = ExperimentConfig.load(TINY, base + ["train.hinge.min_step=0.5"])
    logs = make_trainer(build(cfg), tmp_path / "coarse", progress=False).step()
    assert len(seen) == 2 and 0 < len(seen[-1]) < 64 and (seen[-1] >= 0.5).all() and logs["bij"] > 0
    cfg = ExperimentConfig.load(TINY, base + ["train.hinge.min_step=2.0"])    # no step that large: no hinge term
    logs = make_trainer(build(cfg), tmp_path / "none", progress=False).step()
    assert len(seen) == 2 and "bij" not in logs and np.isfinite(logs["loss"])
    # at the sampler's states, only the kept rows are advanced
    cfg = ExperimentConfig.load(TINY, base + ["train.hinge.min_step=0.5", "train.hinge.states=flow"])
    trainer = make_trainer(build(cfg), tmp_path / "flow", progress=False)
    advanced, real_states = [], trainer.flow_states
    trainer.flow_states = lambda t, d, scale=1.0: advanced.append(d.clone()) or real_states(t, d, scale)
    trainer.step()
    assert len(advanced) == 1 and (advanced[0] >= 0.5).all() and torch.equal(advanced[0], seen[-1])


def test_per_loss_clipping_adds_the_separately_clipped_gradients(tmp_path):
    # clip_per_loss: .grad = clip(grad base) + clip(grad distillation), each to norm grad_clip
    trainer = Trainer(build(tiny(4, "train.distill.start=0", "train.distill.ramp=1", clip_per_loss=True, grad_clip=1e-3)), tmp_path,
                      progress=False)
    params = list(trainer.exp.model.parameters())
    base, rest, logs = trainer.losses()
    expected = [torch.zeros_like(p) for p in params]
    for part, name in ((base, "grad_base"), (rest, "grad_rest")):
        grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        assert norm > 1e-3
        for e, g in zip(expected, grads):
            e += g * (1e-3 / norm)
        got = {}
        trainer.clipped_sum_of_gradients((part,), (name,), got)
        assert abs(got[name] - norm) < 1e-5 * norm
    assert trainer.clipped_sum_of_gradients((base, rest), ("grad_base", "grad_rest"), logs)
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, rtol=1e-4, atol=1e-9)
    state = train(tiny(4, "train.distill.start=0", clip_per_loss=True), tmp_path / "run", progress=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert state.iteration == 4 and all(r["grad_base"] > 0 and r["grad_rest"] > 0 for r in logs)


@pytest.mark.cuda
def test_energy_route_trains_on_cuda_and_samples_on_cpu(tmp_path):
    state = train(tiny(4), tmp_path, device="cuda", progress=False)
    assert state.iteration == 4 and state.nonfinite_total == 0
    exp, _ = load_checkpoint(tmp_path / CHECKPOINT, "cpu")
    assert all(p.device.type == "cpu" for p in exp.model.parameters())
