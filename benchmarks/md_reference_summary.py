"""Summarise a `molsample md` run: time, speed, statistical inefficiency and effective samples per ns.

    python benchmarks/md_reference_summary.py runs/aldp_md/aldp_md.json

Reads the JSON written beside the trajectories (settings, per-replica records with pymbar
statistics) and prints a Markdown table.
"""
import json
import sys


def main(path: str) -> None:
    meta = json.load(open(path))
    s = meta["settings"]
    frame_ps = s["report_every"] * s["timestep_fs"] / 1000.0
    print(f"# {s['system']}: {len(meta['replicas'])} x {s['ns']} ns, T = {meta['replicas'][0]['temperature_K']} K, "
          f"{s['timestep_fs']} fs, friction {s['friction_per_ps']}/ps, frames every {frame_ps} ps, "
          f"platform {s['platform']}, OpenMM {meta['openmm_version']}; production wall time per replica "
          f"{max(r.get('wall_seconds', 0) for r in meta['replicas']) / 3600:.2f} h (replicas in parallel)")
    print("| replica | wall (h) | ns/day | observable | g (frames) | corr. time (ps) | N_eff | N_eff per ns | "
          "equilibrated after (ps) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rec in meta["replicas"]:
        wall = rec.get("wall_seconds", float("nan"))
        nsday = s["ns"] / wall * 86400 if wall == wall else float("nan")
        for name, st in rec["statistics"].items():
            extra = f" (fraction {st['fraction']:.4f})" if "fraction" in st else ""
            print(f"| {rec['replica']} | {wall / 3600:.2f} | {nsday:.0f} | {name}{extra} | {st['g']:.1f} | "
                  f"{st['correlation_time_ps']:.1f} | {st['n_eff']:.0f} | {st['n_eff'] / s['ns']:.1f} | {st['t0_ps']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
