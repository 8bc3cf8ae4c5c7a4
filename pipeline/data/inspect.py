"""``myriad inspect PATH``: what an analysis store (or a stats.nc) holds.

:func:`summarize` returns a plain dict (metadata only; no field data is
read): channels, grid, time span and step, completeness (blocks done / total
and the missing time ranges) and, when a ``stats.nc`` lies beside the store,
its per-channel statistics. :func:`render_summary` turns it into rich tables.
PATH may be the store, its run directory, or a stats.nc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pipeline.data.statistics import load_statistics
from pipeline.data.store import (
    completed_blocks,
    format_ranges,
    format_time,
    missing_time_ranges,
    open_store_group,
    store_times,
)
from pipeline.errors import MyriadError

STATS_NAME = "stats.nc"
ANALYSIS_NAME = "analysis.zarr"


def summarize(path: str | Path) -> dict[str, Any]:
    """Summary of an analysis store or stats file.

    Returns
    -------
    dict
        For a store: ``kind="analysis"``, ``path``, ``source``, ``grid``,
        ``nlat``, ``nlon``, ``channels`` (name -> units), ``static``,
        ``time_start``, ``time_end``, ``time_step_hours``, ``n_times``,
        ``n_blocks``, ``blocks_complete``, ``complete``, ``missing`` (list of
        ``[first, last]`` strings), ``config_hash``, ``created``, ``software``
        and ``statistics`` (the stats summary below, None without a
        stats.nc, or ``{"error": message}`` for an unreadable one). For a stats
        file: ``kind="statistics"``, ``path``, ``period_start``,
        ``period_end``, ``n_times``, ``time_step_hours`` and ``channels``
        (name -> {mean, std, min, max, tendency_std}).

    Raises
    ------
    MyriadError
        PATH is neither a Myriad store, a run directory holding one, nor a stats file.
    """
    path = Path(path)
    if path.suffix == ".nc":
        return _summarize_statistics(path)
    if path.is_dir() and (path / ANALYSIS_NAME).exists():
        path = path / ANALYSIS_NAME
    group = open_store_group(path)
    attrs = dict(group.attrs)
    times = store_times(group)
    done = completed_blocks(group)
    channels = list(attrs.get("channels", []))
    lat, lon = group[channels[0]].shape[1:] if channels else (None, None)
    stats_path = path.parent / STATS_NAME
    return {
        "kind": "analysis",
        "path": str(path),
        "source": attrs.get("source"),
        "grid": attrs.get("grid"),
        "nlat": lat,
        "nlon": lon,
        "channels": {name: group[name].attrs.get("units", "") for name in channels},
        "static": list(attrs.get("static", [])),
        "time_start": format_time(times[0]),
        "time_end": format_time(times[-1]),
        "time_step_hours": attrs.get("time_step_hours"),
        "n_times": len(times),
        "n_blocks": int(done.size),
        "blocks_complete": int(done.sum()),
        "complete": bool(done.all()),
        "missing": [[format_time(a), format_time(b)] for a, b in missing_time_ranges(group)],
        "config_hash": attrs.get("config_hash"),
        "created": attrs.get("created"),
        "software": attrs.get("software"),
        "statistics": _statistics_beside(stats_path),
    }


def _statistics_beside(path: Path) -> dict[str, Any] | None:
    """The stats summary of ``path``; None if absent, ``{"error": ...}`` if unreadable."""
    if not path.exists():
        return None
    try:
        return _summarize_statistics(path)
    except MyriadError as exc:
        return {"kind": "statistics", "path": str(path), "error": str(exc)}


def _summarize_statistics(path: Path) -> dict[str, Any]:
    stats = load_statistics(path)
    channels = {
        str(name): {key: float(stats[key].sel(channel=name)) for key in ("mean", "std", "min", "max", "tendency_std")}
        for name in stats["channel"].values
    }
    return {
        "kind": "statistics",
        "path": str(path),
        "period_start": stats.attrs.get("period_start"),
        "period_end": stats.attrs.get("period_end"),
        "n_times": stats.attrs.get("n_times"),
        "time_step_hours": stats.attrs.get("time_step_hours"),
        "channels": channels,
    }


def _statistics_table(summary: dict[str, Any]) -> Table:
    table = Table(title=escape(f"statistics {summary['path']}  ({summary['period_start']} .. {summary['period_end']}, "
                        f"{summary['n_times']} times)"))
    table.add_column("channel")
    for key in ("mean", "std", "min", "max", "tendency_std"):
        table.add_column(key, justify="right")
    for name, values in summary["channels"].items():
        table.add_row(name, *(f"{values[key]:.5g}" for key in ("mean", "std", "min", "max", "tendency_std")))
    return table


def render_summary(path: str | Path) -> RenderableType:
    """Rich tables describing PATH (see :func:`summarize`)."""
    summary = summarize(path)
    if summary["kind"] == "statistics":
        return _statistics_table(summary)
    overview = Table(title=escape(f"analysis store {summary['path']}"), show_header=False)
    overview.add_column("field", style="bold")
    overview.add_column("value")
    completeness = f"{summary['blocks_complete']}/{summary['n_blocks']} blocks"
    completeness += " (complete)" if summary["complete"] else " (INCOMPLETE)"
    rows = [
        ("source", str(summary["source"])),
        ("grid", f"{summary['grid']} ({summary['nlat']} x {summary['nlon']})"),
        ("channels", ", ".join(f"{name} [{units}]" for name, units in summary["channels"].items())),
        ("static", ", ".join(summary["static"]) or "none"),
        ("time", f"{summary['time_start']} .. {summary['time_end']} every {summary['time_step_hours']} h "
                 f"({summary['n_times']} times)"),
        ("completeness", completeness),
        ("config hash", str(summary["config_hash"])),
        ("created", f"{summary['created']} by {summary['software']}"),
    ]
    if summary["missing"]:
        rows.insert(6, ("missing", format_ranges([(first, last) for first, last in summary["missing"]])))
    for field, value in rows:
        overview.add_row(field, escape(value))
    parts: list[RenderableType] = [overview]
    stats = summary["statistics"]
    if stats is not None and "error" in stats:
        parts.append(Text(stats["error"], style="red"))
    elif stats is not None:
        parts.append(_statistics_table(stats))
    else:
        parts.append(Text(f"no {STATS_NAME} beside the store (run `myriad stats CONFIG`)", style="dim"))
    return Group(*parts)

