"""Diagnose an umbrella-sampling reference: per-window offsets from the centres, statistical
inefficiencies (pymbar's and the block estimate of molsample.umbrella), MBAR overlap, and the sample
weights with the full vs the decorrelated window counts, each against plain MD where MD is converged
(phi < 0): p(alpha_R | phi < 0) and KL(phi | phi < 0).

Reads either a compact reference (systems/aldp/reference/*.npz, every `stride`-th sample; window
membership from the sample index) or the output of `molsample umbrella` (OUT.npz with OUT.json and
OUT.windows/), and the MD reference for the comparison.

    python benchmarks/umbrella_diagnose.py systems/aldp/reference/aldp_umbrella_2d_12x12.npz \
        --md systems/aldp/reference/aldp_md_2x50ns.npz
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from molsample.analysis.basins import basin_indicators, phi_positive
from molsample.analysis.stats import histogram_kl
from molsample.umbrella import (UmbrellaSettings, kappas, overlap_report, restrained_angles, statistical_inefficiency,
                                window_bias, wrap_angle)

EDGES_NEG = np.linspace(-math.pi, 0.0, 19)      # the 10-degree bins of `molsample compare` with phi < 0


def neg_metrics(phi, psi, w=None) -> dict:
    w = np.ones(len(phi)) if w is None else w
    m = ~phi_positive(phi)
    a = basin_indicators(phi[m], psi[m])["alpha_R"]
    return {"p_alphaR_given_neg": float((w[m] * a).sum() / w[m].sum()), "phi": phi[m], "w": w[m]}


def load(path: Path):
    d = np.load(path)
    if "compact_reference" in d:
        settings = json.loads(str(d["settings"] if "settings" in d else d["umbrella_settings"]))
        est = json.loads(str(d["estimates"]))
        stride = int(d["stride"])
        n_per = int(round(settings["ns_per_window"] * 1e6 / settings["timestep_fs"] / settings["sample_every"]))
        phi, psi = wrap_angle(d["phi"]), wrap_angle(d["psi"])
        win = (stride * np.arange(len(phi))) // n_per
        dt_ps = stride * settings["sample_every"] * settings["timestep_fs"] / 1000
    else:
        meta = json.loads(path.with_suffix(".json").read_text())
        settings, est = meta["settings"], meta["estimates"]
        files = sorted(path.with_name(path.stem + ".windows").glob("window_*.npz"))
        ws = [np.load(f) for f in files]
        phi = np.concatenate([w["phi"] for w in ws])
        psi = np.concatenate([w["psi"] for w in ws])
        win = np.concatenate([np.full(len(w["phi"]), k) for k, w in enumerate(ws)])
        dt_ps = settings["sample_every"] * settings["timestep_fs"] / 1000
    for key in ("windows", "kappa"):
        if isinstance(settings[key], list):
            settings[key] = tuple(settings[key])
    return UmbrellaSettings(**settings), est, phi, psi, win, dt_ps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference")
    ap.add_argument("--md", required=True)
    ap.add_argument("--kt", type=float, default=2.494338785445972)
    args = ap.parse_args()
    s, est, phi, psi, win, dt_ps = load(Path(args.reference))
    names, kap = restrained_angles(s), kappas(s)
    centres = np.array(est["windows"]["centres_rad"])
    f_k, n_kept = np.array(est["windows"]["f_k"]), np.array(est["windows"]["n_decorrelated"], dtype=float)
    K = len(centres)
    ang = {"phi": phi, "psi": psi}
    rows = []
    for k in range(K):
        m = win == k
        off = [math.degrees(np.angle(np.exp(1j * (ang[n][m] - c))).mean()) for n, c in zip(names, centres[k])]
        g_py, g_blk = [], []
        from pymbar import timeseries
        for n in ("phi", "psi"):
            c = dict(zip(names, centres[k])).get(n, 0.0)
            for f in (np.sin, np.cos):
                x = f(ang[n][m] - c)
                g_py.append(timeseries.statistical_inefficiency(x) if np.ptp(x) > 0 else 1.0)
                g_blk.append(statistical_inefficiency(x))
        rows.append((off, max(g_py), max(g_blk)))
    off = np.array([r[0] for r in rows])
    g_py, g_blk = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    print(f"{K} windows; samples {dt_ps:.2f} ps apart in this file")
    print(f"mean offset of a window's angles from its centre (deg): max |.| per angle {np.abs(off).max(0).round(1)}, "
          f"windows with |offset| > half a spacing: {int((np.abs(off) > 180 / np.array(centres.shape[0] ** (1 / len(names)))).any(1).sum())}")
    print(f"g (max over sin, cos of phi, psi) at this spacing: pymbar: {np.sum(g_py <= 1.0)} windows at exactly 1.0, "
          f"median {np.median(g_py):.2f}; block estimate: median {np.median(g_blk):.2f}, "
          f"windows > 5: {int((g_blk > 5).sum())}; recorded g (0.1 ps) = 1.0 in {int((np.array(est['windows']['g']) == 1.0).sum())}")
    # MBAR overlap from the samples of this file with the run's window free energies
    from pymbar import MBAR
    n_here = np.bincount(win, minlength=K).astype(float)
    u_kn = np.stack([window_bias(ang, c, names, kap) / args.kt for c in centres])
    mbar = MBAR(u_kn, n_here, initial_f_k=f_k - f_k[0])
    ov = overlap_report(mbar)
    weak = np.argsort(ov["neighbour_overlap"])[:6]
    print(f"MBAR overlap of these samples: scalar {ov['scalar']:.4f}, smallest eigenvalue {ov['smallest_eigenvalue']:.2e}; "
          f"weakest windows (centre deg: best overlap) " +
          ", ".join(f"{np.degrees(centres[k]).round().tolist()}: {ov['neighbour_overlap'][k]:.3f}" for k in weak))
    # sample weights: mixture with the full window counts (correct) vs the decorrelated counts (the old weights)
    u_all = u_kn
    out = {}
    for label, n_k in (("full counts", n_here), ("decorrelated counts", n_kept * n_here / n_here.mean())):
        ld = np.logaddexp.reduce(np.log(n_k)[:, None] + f_k[:, None] - u_all, axis=0)
        lw = -ld - np.logaddexp.reduce(-ld)
        out[label] = np.exp(lw)
    md = np.load(args.md)
    mphi, mpsi = wrap_angle(md["phi"]), wrap_angle(md["psi"])
    seg = np.cumsum(md["segments"])[:-1]
    halves = [neg_metrics(a, b) for a, b in zip(np.split(mphi, seg), np.split(mpsi, seg))]
    mdall = neg_metrics(mphi, mpsi)
    floor = histogram_kl(halves[1]["phi"], halves[0]["phi"], [EDGES_NEG])
    print(f"plain MD: p(alpha_R | phi<0) {mdall['p_alphaR_given_neg']:.4f} (halves "
          f"{halves[0]['p_alphaR_given_neg']:.4f}, {halves[1]['p_alphaR_given_neg']:.4f}); KL(phi | phi<0) floor "
          f"(half vs half) {floor:.4f}")
    for label, w in out.items():
        u = neg_metrics(phi, psi, w)
        kl = histogram_kl(mdall["phi"], u["phi"], [EDGES_NEG], None, u["w"])
        print(f"umbrella weights with {label}: p(alpha_R | phi<0) {u['p_alphaR_given_neg']:.4f}, "
              f"KL(phi | phi<0) vs MD {kl:.4f}, p(phi>0) {w[phi_positive(phi)].sum():.5f}")
    if "log_w" in np.load(args.reference):
        lw = np.load(args.reference)["log_w"]
        print(f"(the file's own log_w: p(phi>0) {np.exp(lw - np.logaddexp.reduce(lw))[phi_positive(phi)].sum():.5f})")


if __name__ == "__main__":
    main()
