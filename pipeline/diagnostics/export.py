"""Export an ensemble store in the WeatherBench2 forecast layout (``myriad export --format weatherbench2``).

WeatherBench2 (``weatherbench2.evaluation``) reads a forecast Zarr with dims
``time`` (the init time), ``prediction_timedelta`` (the lead time),
``latitude`` (ascending, WB2's own ERA5 copies run -90 -> 90), ``longitude``
and, for ensembles, ``number`` (the member). The export renames
``init_time -> time``, ``lead_time -> prediction_timedelta``,
``member -> number``, flips latitude to ascending, orders the dims
``(time, prediction_timedelta, number, latitude, longitude)`` and keeps the
per-member coordinates (``checkpoint``, ``perturbation``, ``pair``,
``sample``, ``seed``) on ``number``; ``valid_time`` is dropped (WB2 derives
it). Variables keep Myriad's short channel names (``z500``, ``t2m``): WB2's
configs name variables freely (``variables=["z500", ...]`` with
``by_level=False``); renaming to ERA5 long names with a ``level`` dim is not
done.

The copy streams chunk by chunk (chunks ``(1, 1, member_block, nlat, nlon)``)
on the configured Dask cluster and is written to a hidden ``.partial``
directory that is renamed into place when complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import xarray as xr

from pipeline.config import MyriadConfig
from pipeline.diagnostics.inputs import channels_of, open_ensemble
from pipeline.diagnostics.run import ensemble_name, ensemble_path, write_store
from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)

FORMATS = ("weatherbench2",)
WB2_DIMS = ("time", "prediction_timedelta", "number", "latitude", "longitude")
RENAMES = {"init_time": "time", "lead_time": "prediction_timedelta", "member": "number"}


def to_weatherbench2(ds: xr.Dataset) -> xr.Dataset:
    """The ensemble Dataset in WB2 layout (lazy)."""
    channels = channels_of(ds)
    out = ds[channels].drop_vars(["valid_time"], errors="ignore").rename(RENAMES)
    out = out.isel(latitude=slice(None, None, -1))
    for name in channels:
        out[name] = out[name].transpose(*WB2_DIMS)
        out[name].encoding = {}
    out.attrs = {k: v for k, v in ds.attrs.items() if k != "myriad_layout"}
    out.attrs["layout"] = "weatherbench2 (time=init time, prediction_timedelta=lead time, number=member)"
    return out


def default_output(config: MyriadConfig) -> Path:
    """``<run_dir>/exports/<ensemble>-weatherbench2.zarr``."""
    return Path(config.run_dir) / "exports" / f"{ensemble_name(config)}-weatherbench2.zarr"


def export(config: MyriadConfig, fmt: str = "weatherbench2", output: str | Path | None = None) -> Path:
    """Export the configured (complete) ensemble store; returns the output path.

    Raises
    ------
    MyriadError
        Unknown format, missing or incomplete ensemble store.
    """
    from pipeline.dask_cluster import dask_client

    if fmt not in FORMATS:
        raise MyriadError(f"export: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    source = ensemble_path(config)
    ds = open_ensemble(source)
    out = Path(output) if output is not None else default_output(config)
    if out.resolve() == source.resolve():
        raise MyriadError(f"export: output {out} is the ensemble store itself")
    wb2 = to_weatherbench2(ds)
    logger.info("exporting %s -> %s (%s layout)", source, out, fmt)
    with dask_client(config.dask):
        write_store(wb2, out)
    return out
