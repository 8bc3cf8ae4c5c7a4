"""Figures of a diagnostics store (matplotlib, Agg backend, PNG files).

Every function takes the opened diagnostics store (and :func:`summarise`'s
aggregate where scores are shown), writes one PNG per channel into
``out_dir`` and returns :class:`Figure` records for the report. Only the
small slices a figure shows are loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

logger = logging.getLogger(__name__)

DPI = 90


@dataclass(frozen=True)
class Figure:
    """One PNG of the report: section, file name (relative to the report dir), caption."""

    section: str
    channel: str
    filename: str
    caption: str


def lead_hours(ds: xr.Dataset | xr.DataArray) -> np.ndarray:
    """Lead times in hours (float)."""
    return ds["lead_time"].values / np.timedelta64(1, "h")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _map_lead(ds: xr.Dataset, map_lead_hours: int | None) -> int:
    hours = lead_hours(ds)
    if map_lead_hours is None:
        return len(hours) - 1
    return int(np.argmin(np.abs(hours - map_lead_hours)))


def maps(ds: xr.Dataset, out_dir: Path, map_lead_hours: int | None = None) -> list[Figure]:
    """Ensemble mean, spread and (if present) EFI of the first init time at one lead time."""
    figures = []
    li = _map_lead(ds, map_lead_hours)
    lead = lead_hours(ds)[li]
    init = np.datetime_as_string(ds["init_time"].values[0], unit="m")
    lon, lat = ds["longitude"].values, ds["latitude"].values
    for channel in ds["channel"].values:
        panels = [("ensemble_mean", "ensemble mean", "viridis", None), ("ensemble_spread", "spread", "magma", None)]
        if "efi" in ds:
            panels.append(("efi", "EFI", "RdBu_r", (-1.0, 1.0)))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 2.9), squeeze=False, layout="constrained")
        units = str(ds["channel_units"].sel(channel=channel).values)
        for ax, (var, title, cmap, limits) in zip(axes[0], panels):
            field = ds[var].sel(channel=channel).isel(init_time=0, lead_time=li).values
            vmin, vmax = limits if limits else (np.nanmin(field), np.nanmax(field))
            mesh = ax.pcolormesh(lon, lat, field, cmap=cmap, vmin=vmin, vmax=vmax, shading="nearest")
            fig.colorbar(mesh, ax=ax, shrink=0.85, label="" if var == "efi" else units)
            ax.set_title(f"{channel} {title}", fontsize=9)
            ax.set_xlabel("longitude")
        axes[0, 0].set_ylabel("latitude")
        fig.suptitle(f"init {init}, lead {lead:g} h", fontsize=9)
        name = f"maps_{channel}.png"
        _save(fig, out_dir / name)
        figures.append(Figure("Maps", str(channel), name,
                              f"{channel}: ensemble mean, spread{' and EFI' if 'efi' in ds else ''}, "
                              f"init {init}, lead {lead:g} h"))
    return figures


def scores_vs_lead(summary: xr.Dataset, out_dir: Path) -> list[Figure]:
    """RMSE and spread, SSR, CRPS and outlier fraction against lead time, one line per region."""
    figures = []
    hours = lead_hours(summary)
    m = int(summary.attrs["n_members"])
    for channel in summary["channel"].values:
        s = summary.sel(channel=channel)
        fig, axes = plt.subplots(2, 2, figsize=(9.5, 6.2))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for k, region in enumerate(s["region"].values):
            c = colors[k % len(colors)]
            r = s.sel(region=region)
            axes[0, 0].plot(hours, r["rmse"], color=c, marker="o", ms=3, label=f"{region} RMSE")
            axes[0, 0].plot(hours, r["spread"], color=c, ls="--", label=f"{region} spread")
            axes[0, 1].plot(hours, r["spread_skill_ratio"], color=c, marker="o", ms=3, label=str(region))
            axes[1, 0].plot(hours, r["crps_fair"], color=c, marker="o", ms=3, label=f"{region} fair")
            axes[1, 0].plot(hours, r["crps"], color=c, ls=":", label=f"{region} standard")
            axes[1, 1].plot(hours, r["outlier_fraction"], color=c, marker="o", ms=3, label=str(region))
        axes[0, 1].axhline(1.0, color="k", lw=0.8)
        axes[1, 1].axhline(2.0 / (m + 1), color="k", lw=0.8, label="ideal 2/(M+1)")
        titles = ["ensemble-mean RMSE (solid) and spread (dashed)", "spread-skill ratio", "CRPS (fair solid, standard dotted)",
                  "outlier fraction"]
        for ax, title in zip(axes.ravel(), titles):
            ax.set_title(f"{channel}: {title}", fontsize=9)
            ax.set_xlabel("lead time (h)")
            ax.grid(alpha=0.3)
        axes[0, 1].legend(fontsize=7)
        axes[1, 1].legend(fontsize=7)
        fig.tight_layout()
        name = f"scores_{channel}.png"
        _save(fig, out_dir / name)
        figures.append(Figure("Scores against lead time", str(channel), name,
                              f"{channel}: scores against lead time (mean over init times, {m} members)"))
    return figures


def spectra_vs_lead(ds: xr.Dataset, out_dir: Path) -> list[Figure]:
    """Angular power spectra of the members (mean over members) and of the ensemble mean, coloured by lead."""
    if "spectrum_members" not in ds:
        return []
    figures = []
    hours = lead_hours(ds)
    cmap = plt.get_cmap("viridis")
    for channel in ds["channel"].values:
        members = ds["spectrum_members"].sel(channel=channel).mean("init_time").values
        mean = ds["spectrum_ensemble_mean"].sel(channel=channel).mean("init_time").values
        wn = ds["wavenumber"].values
        keep = wn > 0
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
        for li, h in enumerate(hours):
            color = cmap(li / max(1, len(hours) - 1))
            axes[0].loglog(wn[keep], members[li, keep], color=color, label=f"{h:g} h")
            axes[1].loglog(wn[keep], mean[li, keep], color=color, label=f"{h:g} h")
        axes[0].set_title(f"{channel}: members (mean of member spectra)", fontsize=9)
        axes[1].set_title(f"{channel}: ensemble mean", fontsize=9)
        for ax in axes:
            ax.set_xlabel("total wavenumber l")
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel("power")
        axes[1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"spectra_{channel}.png"
        _save(fig, out_dir / name)
        figures.append(Figure("Spectra", str(channel), name,
                              f"{channel}: angular power spectra by lead time (members should stay put, "
                              "the ensemble mean should lose small scales)"))
    return figures


def rank_histograms(summary: xr.Dataset, out_dir: Path, region: str = "global", max_panels: int = 4) -> list[Figure]:
    """Rank histograms (frequencies, summed over init times) at up to ``max_panels`` lead times."""
    if "rank_histogram" not in summary:
        return []
    figures = []
    hours = lead_hours(summary)
    picks = np.unique(np.linspace(0, len(hours) - 1, min(max_panels, len(hours))).round().astype(int))
    region = region if region in summary["region"].values else str(summary["region"].values[0])
    for channel in summary["channel"].values:
        counts = summary["rank_histogram"].sel(channel=channel, region=region)
        fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 2.6), squeeze=False, sharey=True)
        n_bins = counts.sizes["rank"]
        for ax, li in zip(axes[0], picks):
            c = counts.isel(lead_time=li).values.astype(float)
            freq = c / c.sum() if c.sum() > 0 else c
            ax.bar(np.arange(n_bins), freq, width=1.0, color="tab:blue", edgecolor="none")
            ax.axhline(1.0 / n_bins, color="k", lw=0.8)
            ax.set_title(f"{channel}, {hours[li]:g} h", fontsize=9)
            ax.set_xlabel("rank of the truth")
        axes[0, 0].set_ylabel("frequency")
        fig.tight_layout()
        name = f"rank_{channel}.png"
        _save(fig, out_dir / name)
        figures.append(Figure("Rank histograms", str(channel), name,
                              f"{channel}: rank histograms ({region}; flat = consistent, U = underdispersed)"))
    return figures


def reliability_diagrams(ds: xr.Dataset, out_dir: Path, region: str = "global") -> list[Figure]:
    """Reliability diagrams per channel and extreme quantile, pooled over init and lead times."""
    if "reliability_weight" not in ds:
        return []
    figures = []
    region = region if region in ds["region"].values else str(ds["region"].values[0])
    for channel in ds["channel"].values:
        quantiles = ds["quantile"].values
        fig, axes = plt.subplots(1, len(quantiles), figsize=(3.4 * len(quantiles), 3.3), squeeze=False)
        for ax, q in zip(axes[0], quantiles):
            forecast_p, observed_f = _pooled_reliability(ds, str(channel), region, float(q))
            ax.plot([0, 1], [0, 1], color="k", lw=0.8)
            ax.plot(forecast_p, observed_f, marker="o", color="tab:red")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("forecast probability")
            ax.set_ylabel("observed frequency")
            ax.set_title(f"{channel} > q{q * 100:g} ({region})", fontsize=9)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"reliability_{channel}.png"
        _save(fig, out_dir / name)
        figures.append(Figure("Reliability", str(channel), name,
                              f"{channel}: reliability of exceeding the analysis climate's quantiles "
                              "(pooled over init and lead times; diagonal = reliable)"))
    return figures


def _pooled_reliability(ds: xr.Dataset, channel: str, region: str, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Forecast probability and observed frequency per bin, pooled over lead times with the bins' area weights."""
    sel = {"channel": channel, "region": region, "quantile": q}
    weight = ds["reliability_weight"].sel(sel).load()
    pooled_dims = [d for d in weight.dims if d != "bin"]
    total = weight.sum(pooled_dims)
    with np.errstate(invalid="ignore", divide="ignore"):
        fp = (ds["reliability_forecast_probability"].sel(sel).load() * weight).sum(pooled_dims) / total
        of = (ds["reliability_observed_frequency"].sel(sel).load() * weight).sum(pooled_dims) / total
    ok = total.values > 0
    return fp.values[ok], of.values[ok]


def all_figures(ds: xr.Dataset, summary: xr.Dataset, out_dir: Path, map_lead_hours: int | None = None) -> list[Figure]:
    """Every figure of the report, in report order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = maps(ds, out_dir, map_lead_hours)
    figures += scores_vs_lead(summary, out_dir)
    figures += spectra_vs_lead(ds, out_dir)
    figures += rank_histograms(summary, out_dir)
    figures += reliability_diagrams(ds, out_dir)
    logger.info("wrote %d figures into %s", len(figures), out_dir)
    return figures
