"""Map any ERA5-like Dataset to the canonical form, and validate canonical blocks.

This is the one home for layout knowledge shared by the file, ARCO and CDS
sources. Layouts recognised:

* **new CDS NetCDF**: dim ``valid_time`` (datetime, or int64 seconds since
  1970), ``pressure_level`` (hPa), short names (``t2m``, ``u10``, ``z``...),
  extra coords ``number`` and ``expver``;
* **classic CDS NetCDF**: ``time``, ``level``, possibly an ``expver``
  *dimension* mixing ERA5 and ERA5T (combined by taking, at each point, the
  first non-NaN value in ``expver`` order);
* **cfgrib**: ``time`` (analysis time) with coords ``step``, ``valid_time``,
  ``isobaricInhPa``, ``number``; cfgrib short names (``t2m``, ``u10``, ``gh``);
* **ARCO / WeatherBench2**: ERA5 long names (``2m_temperature``,
  ``geopotential`` with ``level``), dims possibly ordered
  ``(..., longitude, latitude)``, latitude ascending.

Processing happens in two steps so that indexing a file reads coordinates
only: :func:`standardise` renames dims and coords lazily (``time``,
``level`` in hPa, ``latitude``, ``longitude``) and picks the ensemble member;
:func:`extract` then loads the requested channels for the requested times,
converts units, orients the grid (latitude 90 -> -90, longitude ``lon mod
360`` ascending) and casts to float32. :func:`to_canonical` chains both and
checks the result with :func:`validate_block`, which ingest calls as well.

Units: where a variable carries a ``units`` attribute that differs from ours
(:mod:`pipeline.data.channels`) the known simple cases are converted
(geopotential height in m/gpm x g0 = 9.80665 m s-2 -> m2 s-2; hPa x 100 -> Pa;
degC + 273.15 -> K; g/kg x 1e-3 -> kg/kg); anything else raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.data.channels import VARIABLES, channel_attrs, code_for_name, parse_channel
from pipeline.errors import MyriadError
from pipeline.grid import Grid

logger = logging.getLogger(__name__)

STANDARD_GRAVITY = 9.80665
"""g0 in m s-2: geopotential = g0 x geopotential height."""

_LATITUDE_NAMES = ("lat",)
_LONGITUDE_NAMES = ("lon",)
_LEVEL_NAMES = ("pressure_level", "isobaricInhPa", "plev")
_HPA_SPELLINGS = ("hPa", "mbar", "millibars", "millibar", "mb", "hectopascal", "hectopascals")
_SPATIAL_DIMS = ("latitude", "longitude")
_BLOCK_DIMS = ("time", "latitude", "longitude")


def time_axis(start: object, end: object, step_hours: int) -> pd.DatetimeIndex:
    """Regular datetime64[ns] axis from ``start`` to ``end`` inclusive every ``step_hours``."""
    return pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=f"{step_hours}h").as_unit("ns")


# --------------------------------------------------------------------------- standardise


def standardise(ds: xr.Dataset, where: str, member: int = 0) -> xr.Dataset:
    """Rename to ``time``/``level``/``latitude``/``longitude`` and pick ``member``; data stay lazy.

    Parameters
    ----------
    ds
        A Dataset in any recognised layout (see module docstring).
    where
        Name of the origin for error messages (``"file /x/y.nc"``).
    member
        Ensemble member (``number``) to keep where the dataset holds several.

    Returns
    -------
    xr.Dataset
        ``time`` a datetime64[ns] dimension (absent only for time-less static
        data), ``level`` in hPa where present, the ``expver`` *coordinate*
        dropped (an ``expver`` dimension is kept for :func:`extract`).
    """
    ds = ds.rename({n: "latitude" for n in _LATITUDE_NAMES if n in ds.variables and "latitude" not in ds.variables})
    ds = ds.rename({n: "longitude" for n in _LONGITUDE_NAMES if n in ds.variables and "longitude" not in ds.variables})
    if not all(name in ds.dims for name in _SPATIAL_DIMS):
        raise MyriadError(
            f"{where}: not on a regular latitude/longitude grid (dims {dict(ds.sizes)}; "
            "need 'latitude' and 'longitude' dimensions)"
        )
    ds = _standardise_time(ds, where)
    ds = _standardise_level(ds, where)
    ds = _select_member(ds, where, member)
    if "expver" in ds.coords and "expver" not in ds.dims:
        ds = ds.drop_vars("expver")
    return ds


def _standardise_time(ds: xr.Dataset, where: str) -> xr.Dataset:
    if "step" in ds.dims:
        if ds.sizes["step"] != 1:
            raise MyriadError(
                f"{where}: holds {ds.sizes['step']} forecast steps (dim 'step'); only analyses can be read"
            )
        ds = ds.isel(step=0)
    if "valid_time" in ds.variables:
        valid_dims = ds["valid_time"].dims
        if "time" in ds.variables and "time" not in valid_dims:
            ds = ds.drop_vars("time")  # cfgrib analysis time or a stray scalar
        if valid_dims == ("time",):
            ds = ds.swap_dims({"time": "valid_time"}).drop_vars("time")
        elif valid_dims not in ((), ("valid_time",)):
            raise MyriadError(f"{where}: 'valid_time' has dims {valid_dims}; expected one time dimension")
        ds = ds.rename({"valid_time": "time"})
    ds = ds.drop_vars([n for n in ("step",) if n in ds.variables])
    if "time" not in ds.variables:
        return ds
    if "time" not in ds.dims:
        ds = ds.expand_dims("time")
    return ds.assign_coords(time=_as_datetime_index(ds["time"].values, where))


def _as_datetime_index(values: np.ndarray, where: str) -> pd.DatetimeIndex:
    """Times as datetime64[ns]; integers are seconds since 1970-01-01 (new CDS files)."""
    try:
        if np.issubdtype(values.dtype, np.integer):
            index = pd.to_datetime(values, unit="s")
        else:
            index = pd.DatetimeIndex(pd.to_datetime(values))
    except (TypeError, ValueError, OverflowError) as exc:
        raise MyriadError(f"{where}: time values cannot be read as dates ({exc})") from None
    return index.as_unit("ns")


def _standardise_level(ds: xr.Dataset, where: str) -> xr.Dataset:
    for name in _LEVEL_NAMES:
        if name in ds.variables and "level" not in ds.variables:
            ds = ds.rename({name: "level"})
    if "level" not in ds.variables:
        return ds
    units = _normalise_units(ds["level"].attrs.get("units", ""))
    in_pascal = units == "Pa"
    if units not in ("Pa", *_HPA_SPELLINGS):
        # unknown or missing units: pressure levels in hPa lie within 0..1100, in Pa above
        in_pascal = bool(np.nanmax(np.atleast_1d(ds["level"].values)) > 1100)
        logger.debug("%s: level units '%s' read as %s", where, units, "Pa" if in_pascal else "hPa")
    return ds.assign_coords(level=ds["level"] / 100.0) if in_pascal else ds


def _select_member(ds: xr.Dataset, where: str, member: int) -> xr.Dataset:
    if "number" not in ds.variables:
        return ds
    numbers = np.atleast_1d(ds["number"].values).astype(int)
    if member not in numbers:
        raise MyriadError(
            f"{where}: holds ensemble members {numbers.tolist()} but not the configured member {member} (source.member)"
        )
    if "number" in ds.dims:
        ds = ds.isel(number=int(np.flatnonzero(numbers == member)[0]))
    return ds.drop_vars("number")


# --------------------------------------------------------------------------- channels


@dataclass(frozen=True)
class FieldRef:
    """Where a channel lives in a standardised dataset: variable name and level (hPa) or None."""

    variable: str
    level: float | None = None


def available_channels(std: xr.Dataset, where: str) -> dict[str, FieldRef]:
    """Channels (``z500``, ``t2m``, static ``orog``/``lsm``) that a standardised dataset provides.

    Variable names map through :func:`pipeline.data.channels.code_for_name`; a
    pressure-level variable gives one channel per level. Geopotential without
    a level (CDS single-levels ``z``, cfgrib surface ``z``) is the surface
    geopotential ``orog``. Unknown variables are ignored.
    """
    refs: dict[str, FieldRef] = {}
    for variable in std.data_vars:
        name = str(variable)
        code = code_for_name(name)
        if code is None:
            logger.debug("%s: ignoring variable '%s' (no channel name for it)", where, name)
            continue
        da = std[name]
        found: dict[str, FieldRef] = {}
        if not VARIABLES[code].pressure_level:
            found[code] = FieldRef(name)
        elif "level" in da.dims or ("level" in da.coords and da["level"].ndim == 0):
            for level in np.atleast_1d(da["level"].values):
                if float(level) == round(float(level)):
                    found[f"{code}{int(round(float(level)))}"] = FieldRef(name, float(level))
        elif code == "z":
            found["orog"] = FieldRef(name)
        for channel, ref in found.items():
            if channel in refs:
                raise MyriadError(
                    f"{where}: variables '{refs[channel].variable}' and '{name}' both give channel '{channel}'"
                )
            refs[channel] = ref
    return refs


def dataset_times(std: xr.Dataset, where: str) -> pd.DatetimeIndex:
    """The time index of a standardised dataset (empty if it has none); duplicates raise."""
    if "time" not in std.dims:
        return pd.DatetimeIndex([], dtype="datetime64[ns]")
    index = pd.DatetimeIndex(std.indexes["time"])
    if not index.is_unique:
        duplicate = index[index.duplicated()][0]
        raise MyriadError(f"{where}: time {duplicate} appears more than once")
    return index


# --------------------------------------------------------------------------- extract


def extract(
    std: xr.Dataset,
    channels: Sequence[str],
    where: str,
    times: pd.DatetimeIndex | None = None,
    static: bool = False,
) -> xr.Dataset:
    """Load ``channels`` from a standardised dataset in canonical orientation, float32.

    Parameters
    ----------
    std
        Output of :func:`standardise`.
    channels
        Channel names to load; a missing one raises naming it and ``where``.
    where
        Origin for messages.
    times
        Times to select (all times if None); one that is absent raises.
    static
        Static fields: drop the time dimension, taking the first time.

    Returns
    -------
    xr.Dataset
        Variables with dims ``(time, latitude, longitude)`` (``(latitude,
        longitude)`` if ``static``), latitude descending, longitude in [0, 360)
        ascending, CF attributes. The grid is not checked here.
    """
    refs = available_channels(std, where)
    missing = [c for c in channels if c not in refs]
    if missing:
        have = ", ".join(sorted(refs)) or "none"
        raise MyriadError(f"{where}: channel(s) {', '.join(missing)} not found (channels available: {have})")
    index = dataset_times(std, where)
    if times is not None:
        positions = index.get_indexer(pd.DatetimeIndex(times))
        if (positions < 0).any():
            absent = pd.DatetimeIndex(times)[positions < 0]
            raise MyriadError(f"{where}: has no data for time {absent[0]} ({len(absent)} requested times absent)")
        std = std.isel(time=positions)
    elif static and "time" in std.dims:
        std = std.isel(time=slice(0, 1))
    dims = _SPATIAL_DIMS if static else _BLOCK_DIMS
    arrays: dict[str, xr.DataArray] = {}
    for variable, group in _group_by_variable(refs, channels).items():
        da = std[variable]
        if static and "time" not in da.dims:
            da = da.expand_dims("time")
        if not static and "time" not in da.dims:
            raise MyriadError(f"{where}: variable '{variable}' has no time dimension")
        da = _select_levels(da, [ref.level for _, ref in group])
        da = _collapse_expver(da)
        da = _squeeze_extra_dims(da, where, variable)
        lead = ("time", "level") if "level" in da.dims else ("time",)
        values = np.asarray(da.transpose(*lead, *_SPATIAL_DIMS).values)
        for position, (channel, _) in enumerate(group):
            field = values[:, position] if "level" in da.dims else values
            field = convert_units(field, da.attrs.get("units"), channel, where)
            if static:
                field = field[0]
            arrays[channel] = xr.DataArray(
                field.astype(np.float32, copy=False), dims=dims, attrs=channel_attrs(channel)
            )
    coords = {"latitude": std["latitude"].values, "longitude": std["longitude"].values}
    if not static:
        coords["time"] = std["time"].values.astype("datetime64[ns]")
    out = xr.Dataset({c: arrays[c] for c in channels}, coords=coords)
    return orient(out)


def _group_by_variable(refs: dict[str, FieldRef], channels: Iterable[str]) -> dict[str, list[tuple[str, FieldRef]]]:
    groups: dict[str, list[tuple[str, FieldRef]]] = {}
    for channel in channels:
        groups.setdefault(refs[channel].variable, []).append((channel, refs[channel]))
    return groups


def _select_levels(da: xr.DataArray, levels: list[float | None]) -> xr.DataArray:
    """Keep ``levels`` (in that order) as a ``level`` dim; drop a level coord of a single-level variable."""
    if levels[0] is None:
        return da.drop_vars("level") if "level" in da.coords and "level" not in da.dims else da
    if "level" not in da.dims:
        return da.expand_dims("level")
    values = da["level"].values.astype(float)
    return da.isel(level=[int(np.flatnonzero(np.isclose(values, level))[0]) for level in levels])


def _collapse_expver(da: xr.DataArray) -> xr.DataArray:
    """Combine an ``expver`` dimension (ERA5 + ERA5T): first non-NaN value in expver order."""
    if "expver" not in da.dims:
        return da
    combined = da.isel(expver=0, drop=True)
    for k in range(1, da.sizes["expver"]):
        combined = combined.fillna(da.isel(expver=k, drop=True))
    return combined.assign_attrs(da.attrs)


def _squeeze_extra_dims(da: xr.DataArray, where: str, variable: str) -> xr.DataArray:
    extra = [d for d in da.dims if d not in (*_BLOCK_DIMS, "level")]
    too_long = [d for d in extra if da.sizes[d] != 1]
    if too_long:
        raise MyriadError(
            f"{where}: variable '{variable}' has unexpected dimension(s) {too_long} "
            f"(sizes {[da.sizes[d] for d in too_long]}); expected time, level, latitude, longitude"
        )
    return da.isel({d: 0 for d in extra}, drop=True)


def orient(ds: xr.Dataset) -> xr.Dataset:
    """Latitude descending, longitude wrapped to [0, 360) and ascending; data reordered to match."""
    longitude = np.mod(ds["longitude"].values.astype(float), 360.0)
    ds = ds.assign_coords(longitude=longitude)
    if not np.all(np.diff(longitude) > 0):
        ds = ds.isel(longitude=np.argsort(longitude, kind="stable"))
    latitude = ds["latitude"].values.astype(float)
    if not np.all(np.diff(latitude) < 0):
        ds = ds.isel(latitude=np.argsort(-latitude, kind="stable"))
    return ds


def conform_to_grid(ds: xr.Dataset, grid: Grid, where: str) -> xr.Dataset:
    """Check ``ds`` lies on ``grid`` (else raise) and set its exact CF coordinates."""
    grid.require(ds, where)
    return ds.assign_coords(grid.coords())


# --------------------------------------------------------------------------- units

_UNIT_SYNONYMS = {
    "m2 s-2": ("m2 s-2", "m2/s2", "m^2/s^2"),
    "m s-1": ("m s-1", "m/s"),
    "kg kg-1": ("kg kg-1", "kg/kg", "1"),
    "kg m-2": ("kg m-2", "kg/m2", "mm"),
    "Pa s-1": ("Pa s-1", "Pa/s"),
    "s-1": ("s-1", "1/s"),
    "K": ("K", "kelvin", "Kelvin"),
    "Pa": ("Pa", "pascal"),
    "1": ("1", "(0 - 1)", "0-1", "~", "dimensionless", "fraction", ""),
    "%": ("%", "percent"),
    "m": ("m", "metres", "meters"),
}
"""Spellings accepted as our unit (after ``**``/``^`` exponents are normalised)."""

_UNIT_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    # (from, to): (scale, offset) with value_to = scale * value_from + offset
    ("m", "m2 s-2"): (STANDARD_GRAVITY, 0.0),
    ("gpm", "m2 s-2"): (STANDARD_GRAVITY, 0.0),
    ("hPa", "Pa"): (100.0, 0.0),
    ("mbar", "Pa"): (100.0, 0.0),
    ("millibars", "Pa"): (100.0, 0.0),
    ("degC", "K"): (1.0, 273.15),
    ("C", "K"): (1.0, 273.15),
    ("g kg-1", "kg kg-1"): (1e-3, 0.0),
    ("g/kg", "kg kg-1"): (1e-3, 0.0),
}


def _normalise_units(units: object) -> str:
    return " ".join(str(units).replace("**", "").replace("^", "").split())


def convert_units(values: np.ndarray, units: object, channel: str, where: str) -> np.ndarray:
    """Return ``values`` in the channel's units, converting known simple cases.

    ``units`` None means "already ours". Conversions are ``scale * x + offset``
    (see module docstring); an unknown mismatch raises naming channel and origin.
    """
    ours = VARIABLES[parse_channel(channel).code].units
    if units is None:
        return values
    given = _normalise_units(units)
    if given == ours or given in _UNIT_SYNONYMS.get(ours, ()):
        return values
    if (given, ours) in _UNIT_CONVERSIONS:
        scale, offset = _UNIT_CONVERSIONS[(given, ours)]
        _log_conversion(where, channel, given, ours, scale, offset)
        return values.astype(np.float64) * scale + offset
    raise MyriadError(
        f"{where}: channel '{channel}' has units '{units}' but '{ours}' is expected, and no conversion is known"
    )


@lru_cache(maxsize=256)
def _log_conversion(where: str, channel: str, given: str, ours: str, scale: float, offset: float) -> None:
    logger.info("%s: channel '%s' converted from '%s' to '%s' (x %g + %g)", where, channel, given, ours, scale, offset)


# --------------------------------------------------------------------------- whole path


def to_canonical(
    ds: xr.Dataset,
    grid: Grid,
    channels: Sequence[str],
    where: str,
    member: int = 0,
    times: pd.DatetimeIndex | None = None,
) -> xr.Dataset:
    """Standardise, extract, check the grid and validate: the canonical block of ``ds``.

    Raises
    ------
    MyriadError
        Missing channel or time, unknown units, wrong grid, NaN/inf, duplicate
        or unsorted times; the message names ``where``.
    """
    block = conform_to_grid(extract(standardise(ds, where, member), channels, where, times), grid, where)
    validate_block(block, grid, channels, where, times)
    return block


def static_to_canonical(ds: xr.Dataset, grid: Grid, names: Sequence[str], where: str, member: int = 0) -> xr.Dataset:
    """Static fields (``orog``, ``lsm``) of ``ds`` on ``grid``; the first time is used if timed."""
    fields = conform_to_grid(extract(standardise(ds, where, member), names, where, static=True), grid, where)
    validate_static(fields, grid, names, where)
    return fields


# --------------------------------------------------------------------------- validation


def validate_block(
    ds: xr.Dataset,
    grid: Grid,
    channels: Sequence[str],
    where: str,
    times: pd.DatetimeIndex | None = None,
) -> None:
    """Raise a :class:`MyriadError` naming ``where`` unless ``ds`` is a valid canonical block.

    Checks: the grid is ``grid``; every channel is present as float32 with
    dims ``(time, latitude, longitude)``; all values are finite; ``time`` is
    datetime64[ns], unique and strictly increasing (and equal to ``times``
    when given).
    """
    grid.require(ds, where)
    if "time" not in ds.coords:
        raise MyriadError(f"{where}: has no time coordinate")
    index = pd.DatetimeIndex(ds.indexes["time"])
    if ds["time"].dtype != np.dtype("datetime64[ns]"):
        raise MyriadError(f"{where}: time has dtype {ds['time'].dtype}, expected datetime64[ns]")
    if not index.is_unique:
        raise MyriadError(f"{where}: duplicate time {index[index.duplicated()][0]}")
    if not index.is_monotonic_increasing:
        position = int(np.flatnonzero(np.diff(index.asi8) < 0)[0]) + 1
        raise MyriadError(f"{where}: times are not sorted ({index[position]} follows {index[position - 1]})")
    if times is not None and not index.equals(pd.DatetimeIndex(times)):
        raise MyriadError(f"{where}: holds times {_span(index)} but {_span(pd.DatetimeIndex(times))} were requested")
    for channel in channels:
        _check_field(ds, channel, _BLOCK_DIMS, where)
        bad = ~np.isfinite(ds[channel].values)
        if bad.any():
            bad_times = index[bad.any(axis=(1, 2))]
            raise MyriadError(
                f"{where}: channel '{channel}' has {int(bad.sum())} NaN/inf values at {len(bad_times)} time(s), "
                f"first at {bad_times[0]}"
            )


def validate_static(ds: xr.Dataset, grid: Grid, names: Sequence[str], where: str) -> None:
    """As :func:`validate_block` for static fields with dims ``(latitude, longitude)``."""
    grid.require(ds, where)
    for name in names:
        _check_field(ds, name, _SPATIAL_DIMS, where)
        bad = ~np.isfinite(ds[name].values)
        if bad.any():
            raise MyriadError(f"{where}: static field '{name}' has {int(bad.sum())} NaN/inf values")


def _check_field(ds: xr.Dataset, name: str, dims: tuple[str, ...], where: str) -> None:
    if name not in ds.data_vars:
        raise MyriadError(f"{where}: channel '{name}' is missing")
    da = ds[name]
    if da.dims != dims:
        raise MyriadError(f"{where}: channel '{name}' has dims {da.dims}, expected {dims}")
    if da.dtype != np.float32:
        raise MyriadError(f"{where}: channel '{name}' has dtype {da.dtype}, expected float32")


def _span(index: pd.DatetimeIndex) -> str:
    if len(index) == 0:
        return "none"
    return f"{index[0]} .. {index[-1]} ({len(index)})"
