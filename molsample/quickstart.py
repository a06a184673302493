"""`molsample quickstart`: the main job on alanine dipeptide in minutes on a CPU.

Loads a shipped one-step checkpoint (by default the internal-coordinate model), draws
conformations with ONE network evaluation each, computes exact importance weights (for an
internal-coordinate model every sample's; for a Cartesian one as many as the time budget allows,
never fewer than ``min_weights``), and compares against the shipped references: plain MD for the
dihedral distributions where MD is converged (phi < 0), and the system's settled reference (its
``reference`` key: the 2D umbrella grid, checked against replica exchange) for the whole (phi, psi)
plane and dF(phi > 0 vs phi < 0).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = ROOT / "systems" / "aldp" / "models" / "aldp-ic.pt"      # internal coordinates
MD_REFERENCE = ROOT / "systems" / "aldp" / "reference" / "aldp_md_2x50ns.npz"


@dataclass
class QuickstartResult:
    out_dir: Path
    report: Path
    n_drawn: int
    n_weighted: int
    seconds_sampling: float
    seconds_weights: float
    n_nonpositive_det: int


def draw_one_step(exp, n: int, generator: torch.Generator, batch: int = 128):
    """n prior samples x0 and their one-step images x = Phi(x0; 0, 1), (n, N, 3) each."""
    from .sampler import integrate
    velocity = exp.velocity()
    x0s, xs = [], []
    for start in range(0, n, batch):
        x0 = exp.prior.sample(min(batch, n - start), generator, dtype=exp.dtype).to(exp.device)
        xs.append(integrate(velocity, exp.prior, x0, 1, None).x)
        x0s.append(x0)
    return torch.cat(x0s), torch.cat(xs)


def exact_weights(exp, x0: torch.Tensor, x: torch.Tensor, deadline: float, min_weights: int, batch: int = 256,
                  progress: bool = True):
    """Exact one-step log q and log w, batch by batch, until ``deadline`` (time.perf_counter) has
    passed and at least ``min_weights`` samples are done (or all are). Returns (n_done, log_q,
    log_w, log_prob, n_nonpositive_det, the velocity's bijectivity ratio per sample, smallest
    eigenvalue of the symmetric part of J_step per sample)."""
    from .runtime import progress_bar

    from .flow import as_times
    from .jacobian import step_log_volume
    velocity, space = exp.velocity(), exp.space
    lq, lp, bad, ratio, mono = [], [], 0, [], []
    bar = progress_bar(total=len(x0), enabled=progress, desc="exact weights", unit="sample", file_interval=10.0)
    done = 0
    while done < len(x0) and (done < min_weights or time.perf_counter() < deadline):
        sl = slice(done, min(done + batch, len(x0)))
        vol = step_log_volume(velocity, x0[sl], 0.0, 1.0, space, "exact")
        bad += int(vol.invalid.sum())
        t, d = as_times(0.0, x0[sl]), as_times(1.0, x0[sl])
        r, m = vol.bijectivity(lambda j: velocity.bijectivity_ratio(j, t, d))
        ratio.append(r)                                                      # bijective if < 1 everywhere
        mono.append(m)                                                       # or if > 0 everywhere
        lq.append(exp.prior.log_prob(x0[sl]) - vol.log_det)
        with torch.no_grad():
            lp.append(-exp.target.energy(x[sl]))
        done = sl.stop
        bar.update(sl.stop - sl.start)
    bar.close()
    log_q, log_prob = torch.cat(lq), torch.cat(lp)
    return done, log_q, log_prob - log_q, log_prob, bad, torch.cat(ratio), torch.cat(mono)


def run_quickstart(checkpoint: str | Path | None = None, out_dir: str | Path = "quickstart_aldp", n: int = 100_000,
                   min_weights: int = 20_000, budget_seconds: float = 600.0, seed: int = 0, device: str = "cpu",
                   progress: bool = True) -> QuickstartResult:
    """Sample, weight, compare; write ``out_dir``/report.md. See the module docstring."""
    from .analysis.ensembles import Ensemble
    from .io import save_samples
    from .train import load_checkpoint

    t_start = time.perf_counter()
    checkpoint = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}; train one with "
                                "`molsample train configs/aldp-ic.yaml` and pass --checkpoint")
    from .coords.model import is_internal_checkpoint
    from .io import read_checkpoint
    peek = read_checkpoint(checkpoint)
    if is_internal_checkpoint(peek):
        return _run_internal(checkpoint, peek, Path(out_dir), n, seed, device, progress, t_start)
    exp, ckpt = load_checkpoint(checkpoint, device)
    if exp.target.name not in ("aldp", "aldp-vacuum"):
        raise ValueError(f"{checkpoint}: quickstart runs alanine dipeptide; this checkpoint is for {exp.target.name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x0, x = draw_one_step(exp, n, gen)
    t_sampling = time.perf_counter() - t0
    # keep about a quarter of the budget for the comparison and the report
    deadline = t_start + 0.75 * budget_seconds
    t0 = time.perf_counter()
    m, log_q, log_w, log_prob, bad, ratio, mono = exact_weights(exp, x0, x, deadline, min(min_weights, n), progress=progress)
    t_weights = time.perf_counter() - t0
    meta = {"system": exp.target.name, "checkpoint": str(checkpoint), "steps": 1, "weights": "exact", "n": m,
            "n_drawn": n, "seed": seed, "seconds_sampling": t_sampling, "seconds_weights": t_weights,
            "seconds_per_exact_weight": t_weights / max(m, 1), "n_nonpositive_det": bad,
            "bijectivity_ratio_max": float(ratio.max()), "fraction_bijectivity_ratio_below_1": float((ratio < 1).double().mean()),
            "fraction_monotone": float((mono > 0).double().mean()),
            "training_iterations": ckpt["state"]["iteration"], "training_cpu_seconds": ckpt["state"]["cpu_seconds"]}
    samples = out / "samples.npz"
    save_samples(samples, "samples", meta, x=x[:m].double().cpu().numpy(), log_q=log_q.double().cpu().numpy(),
                 log_w=log_w.double().cpu().numpy(), log_prob=log_prob.double().cpu().numpy())
    save_samples(out / "raw_all.npz", "positions", {"system": exp.target.name, "n": n}, compressed=True,
                 xyz=x.float().cpu().numpy())
    sample = Ensemble.from_samples(x[:m].double(), log_w.double(), exp.target, "one-step sampler")
    sections = _comparisons(sample, exp.target, out)
    total = time.perf_counter() - t_start
    meta["seconds_total"] = total
    head = ["# molsample quickstart: alanine dipeptide in one step", "",
            f"- checkpoint: `{checkpoint.name}` ({ckpt['state']['iteration']} training iterations, "
            f"{ckpt['state']['cpu_seconds'] / 60:.0f} CPU-min)",
            f"- {n} conformations drawn with one network evaluation each in {t_sampling:.1f} s "
            f"({n / max(t_sampling, 1e-9):.0f} /s); raw coordinates in `raw_all.npz`",
            f"- exact importance weights for {m} of them in {t_weights:.1f} s "
            f"({1000 * t_weights / max(m, 1):.2f} ms per sample; det <= 0 at {bad} samples; measured bijectivity "
            f"ratio ||J_step - I||_2 < 1 at {100 * meta['fraction_bijectivity_ratio_below_1']:.1f} % of them; "
            f"symmetric part of J_step positive definite (monotone) at {100 * meta['fraction_monotone']:.1f} %)",
            f"- total {total:.0f} s; samples with weights in `samples.npz`", ""]
    report = _write_outputs(out, meta, head, sections)
    return QuickstartResult(out, report, n, m, t_sampling, t_weights, bad)


def _write_outputs(out: Path, meta: dict, head: list[str], sections: list[str]) -> Path:
    """quickstart.json (the run's figures) and report.md (the head lines, then each comparison)."""
    (out / "quickstart.json").write_text(json.dumps(meta, indent=2))
    report = out / "report.md"
    report.write_text("\n".join(head) + "\n" + "\n".join(sections))
    return report


def _comparisons(sample, target, out: Path) -> list[str]:
    """Report sections: the sample against plain MD and against the system's settled reference."""
    from .analysis.compare import compare, write_report
    from .analysis.ensembles import load_ensemble
    from .targets.registry import default_reference
    sections = []
    refs = [("vs_md", MD_REFERENCE), ("vs_reference", default_reference(target.name))]
    for name, ref_path in refs:
        if ref_path is None or (name == "vs_md" and target.name != "aldp"):
            continue
        ref = load_ensemble([ref_path], target, f"{name[3:]} reference")
        metrics = compare(sample, ref, target)
        rep = write_report(metrics, sample, ref, out / name)
        text = rep.read_text().replace("](", f"]({name}/")
        sections.append(text.replace("\n# ", "\n## ", 1) if not text.startswith("# ") else "#" + text)
    return sections


def _run_internal(checkpoint: Path, ckpt: dict, out: Path, n: int, seed: int, device: str, progress: bool,
                  t_start: float) -> QuickstartResult:
    """Quickstart with an internal-coordinate model: every one of the n samples gets its exact weight."""
    from .runtime import progress_bar

    from .analysis.ensembles import Ensemble
    from .coords.model import load_internal_checkpoint
    from .io import save_samples
    from .estimate import ess
    if str(device) != "cpu":
        raise ValueError(f"--device {device}: the internal-coordinate sampler runs on the CPU for now")
    sampler, ckpt = load_internal_checkpoint(checkpoint, ckpt)
    target = sampler.cartesian
    if target.name not in ("aldp", "aldp-vacuum"):
        raise ValueError(f"{checkpoint}: quickstart runs alanine dipeptide; this checkpoint is for {target.name!r}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with progress_bar(total=n, enabled=progress, desc="one-step samples with exact weights", unit="sample",
                      file_interval=10.0) as bar:
        d = sampler.draw(n, torch.Generator().manual_seed(seed), progress=bar)
    t_draw = time.perf_counter() - t0
    bad = int((d["sign"] <= 0).sum())
    st = ckpt["state"]
    meta = {"system": target.name, "checkpoint": str(checkpoint), "route": "internal", "steps": 1, "weights": "exact",
            "n": n, "n_drawn": n, "seed": seed, "seconds_sampling_and_weights": t_draw,
            "seconds_per_sample": t_draw / n, "n_nonpositive_det": bad, "out_of_domain": int(d["out_of_domain"]),
            "training_iterations": st["iteration"], "training_cpu_seconds": st["cpu_seconds"],
            "base_fit_cpu_seconds": st.get("base_fit_cpu_seconds")}
    samples = out / "samples.npz"
    log_w = d["log_w"].numpy()
    save_samples(samples, "samples", meta, x=d["x"].numpy(), log_q=d["log_q"].numpy(), log_w=log_w)
    sample = Ensemble.from_samples(d["x"], log_w, target, "one-step sampler")
    sections = _comparisons(sample, target, out)
    total = time.perf_counter() - t_start
    meta["seconds_total"] = total
    e = ess(log_w, n_boot=0).value
    head = ["# molsample quickstart: alanine dipeptide in one step (internal coordinates)", "",
            f"- checkpoint: `{checkpoint.name}` (structured base fitted in {st.get('base_fit_cpu_seconds', 0):.0f} "
            f"CPU-s, one-step map trained {st['iteration']} iterations, {st['cpu_seconds'] / 60:.1f} CPU-min)",
            f"- {n} conformations, one network evaluation each, every one with its exact importance weight, in "
            f"{t_draw:.1f} s ({1000 * t_draw / n:.2f} ms per sample); Kish ESS {e:.4f} ({e * n:.0f} effective "
            f"samples); det <= 0 at {bad} samples; {meta['out_of_domain']} outside the domain (weight 0)",
            f"- total {total:.0f} s; samples with weights in `samples.npz`", ""]
    report = _write_outputs(out, meta, head, sections)
    return QuickstartResult(out, report, n, n, t_draw, t_draw, bad)
