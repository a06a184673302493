"""Figures for comparisons (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .stats import weights_from_log as _w


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def ramachandran(ax, phi, psi, weights, title):
    edges = np.linspace(-180, 180, 61)
    h, _, _ = np.histogram2d(np.degrees(phi), np.degrees(psi), bins=[edges, edges], weights=weights)
    with np.errstate(divide="ignore"):
        f = -np.log(h / h.sum())
    f -= np.nanmin(f[np.isfinite(f)])
    im = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower", extent=(-180, 180, -180, 180),
                   vmin=0, vmax=10, cmap="viridis", aspect="equal")
    ax.set(title=title, xlabel="phi (deg)", ylabel="psi (deg)", xticks=[-180, -90, 0, 90, 180],
           yticks=[-180, -90, 0, 90, 180])
    return im


def comparison_figures(sample, ref, out_dir: Path) -> list[Path]:
    plt = _plt()
    files = []
    if sample.phi is not None and ref.phi is not None:
        panels = [(ref.phi, ref.psi, _w(ref.angle_log_w if ref.angle_log_w is not None else ref.log_w),
                   f"reference ({ref.kind})")]
        panels.append((sample.phi, sample.psi, None, f"{sample.label}: raw"))
        if sample.log_w is not None and sample.kind == "sampler":
            panels.append((sample.phi, sample.psi, _w(sample.log_w), f"{sample.label}: reweighted"))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
        for ax, (phi, psi, w, title) in zip(np.atleast_1d(axes), panels):
            im = ramachandran(ax, phi, psi, w, title)
        fig.colorbar(im, ax=axes, label="free energy (kT)", shrink=0.8)
        files.append(out_dir / "ramachandran.png")
        fig.savefig(files[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        edges = np.linspace(-math.pi, math.pi, 37)
        for phi, _, w, title in panels:
            h, _ = np.histogram(phi, bins=edges, weights=w)
            with np.errstate(divide="ignore"):
                f = -np.log(h / h.sum())
            ax.plot(np.degrees(0.5 * (edges[1:] + edges[:-1])), f - np.nanmin(f[np.isfinite(f)]), marker="o",
                    ms=3, label=title)
        ax.set(xlabel="phi (deg)", ylabel="F(phi) (kT)", title="free-energy profile along phi")
        ax.legend(fontsize=8)
        files.append(out_dir / "phi_profile.png")
        fig.savefig(files[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    e_all = np.concatenate([ref.energy, sample.energy[np.isfinite(sample.energy)]])
    lo, hi = np.percentile(e_all, [0.5, 99.5])
    bins = np.linspace(lo, hi, 60)
    ax.hist(ref.energy, bins=bins, weights=_w(ref.log_w), density=True, histtype="step", lw=2, label="reference")
    ok = np.isfinite(sample.energy)
    ax.hist(sample.energy[ok], bins=bins, density=True, histtype="step", label=f"{sample.label}: raw")
    if sample.log_w is not None and sample.kind == "sampler":
        ax.hist(sample.energy[ok], bins=bins, weights=_w(sample.log_w)[ok], density=True, histtype="step",
                label=f"{sample.label}: reweighted")
    ax.set(xlabel="reduced energy u (kT)", ylabel="density", title="energy distribution")
    ax.legend(fontsize=8)
    files.append(out_dir / "energy.png")
    fig.savefig(files[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    if sample.phi is None and sample.x is not None and ref.x is not None and sample.x.ndim == 3:
        files.append(pair_distance_figure(sample, ref, out_dir / "pair_distances.png"))
    return files


def pair_distance_figure(sample, ref, path: Path) -> Path:
    """Histogram of all interparticle distances (particle systems)."""
    from .distances import pair_distances
    plt = _plt()
    d_ref, d_s = pair_distances(ref.x), pair_distances(sample.x)
    bins = np.linspace(0, np.percentile(np.concatenate([d_ref.ravel(), d_s.ravel()]), 99.5), 80)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(d_ref.ravel(), bins=bins, weights=np.repeat(_w(ref.log_w), d_ref.shape[1]) if ref.log_w is not None
            else None, density=True, histtype="step", lw=2, label="reference")
    ax.hist(d_s.ravel(), bins=bins, density=True, histtype="step", label=f"{sample.label}: raw")
    if sample.log_w is not None and sample.kind == "sampler":
        ax.hist(d_s.ravel(), bins=bins, weights=np.repeat(_w(sample.log_w), d_s.shape[1]), density=True,
                histtype="step", label=f"{sample.label}: reweighted")
    ax.set(xlabel="interparticle distance", ylabel="density", title="pair distances")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
