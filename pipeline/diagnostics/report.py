"""The offline report ``<run_dir>/report/<name>/index.html`` (+ the PNG figures beside it).

One self-contained HTML file: inline CSS, no scripts, no network; images by
relative links (``maps_z500.png``...), so the report directory can be copied
or zipped and opened anywhere. The headline table shows, per channel and
reported lead time, the global scores aggregated over init times
(:func:`pipeline.diagnostics.run.summarise`).

The report records the diagnostics store's cache key in a
``<meta name="myriad-key">`` tag, which :func:`report_ready` compares.
"""

from __future__ import annotations

import html
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.config import MyriadConfig
from pipeline.diagnostics.config import DiagnosticsConfig
from pipeline.diagnostics.figures import Figure, all_figures, lead_hours
from pipeline.diagnostics.run import KEY_ATTR, open_diagnostics, summarise

logger = logging.getLogger(__name__)

INDEX = "index.html"

HEADLINE_COLUMNS = (
    ("rmse", "RMSE"),
    ("spread", "spread"),
    ("spread_skill_ratio", "SSR"),
    ("crps_fair", "fair CRPS"),
    ("crps", "CRPS"),
    ("outlier_fraction", "outliers"),
    ("best_member_rmse", "best-member RMSE"),
)

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 72em;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.meta { font-size: .85em; color: #555; } code { background: #f5f5f5; padding: 0 .2em; }
"""


def headline_rows(summary: xr.Dataset, region: str = "global") -> list[dict[str, Any]]:
    """Rows of the headline table: channel, lead hours and the aggregated scores of ``region``."""
    if region not in summary["region"].values:
        region = str(summary["region"].values[0])
    rows = []
    hours = lead_hours(summary)
    for channel in summary["channel"].values:
        for li, h in enumerate(hours):
            row: dict[str, Any] = {"channel": str(channel), "lead_hours": float(h), "region": region}
            for var, _ in HEADLINE_COLUMNS:
                if var in summary:
                    value = float(summary[var].sel(channel=channel, region=region).isel(lead_time=li))
                    row[var] = value
            rows.append(row)
    return rows


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def render(ds: xr.Dataset, summary: xr.Dataset, figures: list[Figure], title: str) -> str:
    """The HTML text of the report."""
    esc = html.escape
    rows = headline_rows(summary)
    columns = [(var, label) for var, label in HEADLINE_COLUMNS if var in summary]
    units = {str(c): str(u) for c, u in zip(ds["channel"].values, ds["channel_units"].values)}
    table = ["<table><tr><th class='l'>channel</th><th>lead (h)</th>"
             + "".join(f"<th>{esc(label)}</th>" for _, label in columns) + "</tr>"]
    for row in rows:
        table.append(
            f"<tr><td class='l'>{esc(row['channel'])} <span class='meta'>[{esc(units.get(row['channel'], ''))}]</span></td>"
            f"<td>{row['lead_hours']:g}</td>" + "".join(f"<td>{_fmt(row.get(var))}</td>" for var, _ in columns) + "</tr>"
        )
    table.append("</table>")
    inits = ds["init_time"].values
    meta = [
        ("ensemble store", ds.attrs.get("ensemble_store", "")),
        ("members", ds.attrs.get("n_members", "")),
        ("init times", (f"{len(inits)} ({np.datetime_as_string(inits[0], unit='m')} .. "
                        f"{np.datetime_as_string(inits[-1], unit='m')})")),
        ("regions", ", ".join(ds.attrs.get("regions", []))),
        ("extreme quantiles", ", ".join(f"{q:g}" for q in ds.attrs.get("quantiles", [])) if "threshold" in ds else "off"),
        ("model climate (EFI/SOT)", ds.attrs.get("model_climate", "none")),
        ("generated", f"{datetime.now(UTC).isoformat(timespec='seconds')} by myriad {__version__}"),
    ]
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='myriad-key' content='{esc(str(ds.attrs.get(KEY_ATTR, '')))}'>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<table>" + "".join(f"<tr><th class='l'>{esc(k)}</th><td class='l'>{esc(str(v))}</td></tr>" for k, v in meta)
        + "</table>",
        "<h2>Headline scores (global, mean over init times)</h2>",
        ("<p class='meta'>RMSE, spread and best-member RMSE: square root of the mean square over init times; "
         "SSR = spread &middot; sqrt((M+1)/M) / RMSE (ideal 1); CRPS: mean over init times; outliers: fraction of "
         f"the area outside the ensemble range (ideal 2/(M+1) = {2 / (int(ds.attrs.get('n_members', 1)) + 1):.3g}).</p>"),
        *table,
    ]
    section = None
    for fig in figures:
        if fig.section != section:
            section = fig.section
            parts.append(f"<h2>{esc(section)}</h2>")
        parts.append(f"<figure><img src='{esc(fig.filename)}' alt='{esc(fig.caption)}'>"
                     f"<figcaption>{esc(fig.caption)}</figcaption></figure>")
    parts.append("<p class='meta'>Open the numbers with xarray: <code>xr.open_zarr(\"" +
                 esc(ds.attrs.get("store_path", "diagnostics/NAME.zarr")) + "\")</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(store: str | Path, out_dir: str | Path, map_lead_hours: int | None = None,
                 title: str | None = None) -> Path:
    """Figures and ``index.html`` of a diagnostics store into ``out_dir``; returns the index path.

    The index is written to a temporary name and renamed, so a reader never
    sees half a page.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = open_diagnostics(store)
    ds.attrs.setdefault("store_path", str(store))
    summary = summarise(ds)
    figures = all_figures(ds, summary, out_dir, map_lead_hours)
    text = render(ds, summary, figures, title or f"Myriad diagnostics: {Path(store).stem}")
    index = out_dir / INDEX
    tmp = out_dir / f".{INDEX}.partial"
    tmp.write_text(text)
    os.replace(tmp, index)
    logger.info("report: %s (%d figures)", index, len(figures))
    return index


def report(config: MyriadConfig) -> Path:
    """The report of the configured diagnostics store: ``<run_dir>/report/<name>/index.html``."""
    settings = config.diagnostics or DiagnosticsConfig()
    return write_report(settings.store_path(config.run_dir), settings.report_dir(config.run_dir),
                        settings.map_lead_hours, f"Myriad diagnostics: {settings.name}")


_KEY_RE = re.compile(r"<meta name='myriad-key' content='([^']*)'>")


def report_ready(config: MyriadConfig, key: str) -> bool:
    """True when ``<run_dir>/report/<name>/index.html`` was made from a store with cache key ``key``."""
    settings = config.diagnostics or DiagnosticsConfig()
    index = settings.report_dir(config.run_dir) / INDEX
    try:
        match = _KEY_RE.search(index.read_text())
    except OSError:
        return False
    return bool(match) and html.unescape(match.group(1)) == key
