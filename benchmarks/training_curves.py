"""Side-by-side table of the evaluations logged during training (one-step ESS, log Z and det <= 0
every ``eval_every`` iterations) for several runs, e.g. an ablation with and without a loss term.

    python benchmarks/training_curves.py runs/gmm9 runs/gmm9-bij [--every 2000] [--plot FILE.png]

Each run directory holds the ``log.jsonl`` and ``config.json`` written by ``molsample train``.
|dlogZ| is printed when the target's log Z is known.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def evaluations(run: Path) -> dict[int, dict]:
    """iteration -> the evaluation entries (keys ess_K, log_z_K, bad_det_K) logged by the trainer."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        ev = {k: v for k, v in rec.items() if k.startswith(("ess_", "log_z_", "bad_det_"))}
        if ev:
            out[rec["iteration"]] = ev
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--every", type=int, default=1, help="keep iterations that are multiples of this")
    ap.add_argument("--plot", type=Path, help="also write a figure of one-step ESS and det <= 0 vs iteration")
    args = ap.parse_args(argv)
    from molsample.targets import load_target

    runs = {}
    for run in args.runs:
        if not (run / "log.jsonl").is_file():
            raise SystemExit(f"{run}: no log.jsonl (not a `molsample train` output directory)")
        cfg = json.loads((run / "config.json").read_text())
        runs[run] = (evaluations(run), load_target(cfg["target"]).log_z, cfg["train"]["eval_samples"])
    iterations = sorted({i for ev, _, _ in runs.values() for i in ev if i % args.every == 0})
    head = "| iteration | " + " | ".join(f"{r.name}: ESS, abs dlogZ, det<=0 (of {n})" for r, (_, _, n) in runs.items()) + " |"
    print(head)
    print("|---" * (len(runs) + 1) + "|")
    for it in iterations:
        cells = []
        for ev, log_z, _ in runs.values():
            e = ev.get(it)
            if e is None:
                cells.append("-")
                continue
            dz = f"{abs(e['log_z_1'] - log_z):.3f}" if log_z is not None else "-"
            cells.append(f"{e['ess_1']:.4f}, {dz}, {e['bad_det_1']}")
        print(f"| {it} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for run, (ev, _, n) in runs.items():
            its = sorted(ev)
            axes[0].plot(its, [ev[i]["ess_1"] for i in its], marker="o", ms=3, label=run.name)
            axes[1].plot(its, [ev[i]["bad_det_1"] / n for i in its], marker="o", ms=3, label=run.name)
        axes[0].set(xlabel="iteration", ylabel="one-step ESS (exact weights)")
        axes[1].set(xlabel="iteration", ylabel="fraction with det <= 0")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
