"""Channel naming: the single home for short names, levels and CF attributes.

Channels follow the ERA5/makani short style: a variable code, optionally
followed by a pressure level in hPa (``z500``, ``t850``, ``u10m``, ``t2m``,
``msl``, ``tcwv``). Pressure-level channels carry ``level`` (hPa) in their
attributes. ERA5 long names (ARCO), CDS short names (``u10``, ``z``...) and
GRIB/cfgrib names all map to these codes here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import MyriadError


@dataclass(frozen=True)
class VariableInfo:
    """CF metadata of one variable code."""

    code: str
    long_name: str
    units: str
    standard_name: str | None = None
    era5_long: str | None = None
    """Long name in ARCO-ERA5 / CDS request vocabulary."""
    pressure_level: bool = False
    non_negative: bool = False
    """Humidity-like fields that are clipped at zero after perturbation."""
    aliases: tuple[str, ...] = ()
    """Other short names found in CDS NetCDF / cfgrib files."""


_VARIABLES: tuple[VariableInfo, ...] = (
    # pressure-level variables
    VariableInfo("z", "geopotential", "m2 s-2", "geopotential", "geopotential", True, aliases=("gh",)),
    VariableInfo("t", "air temperature", "K", "air_temperature", "temperature", True),
    VariableInfo("u", "eastward wind", "m s-1", "eastward_wind", "u_component_of_wind", True),
    VariableInfo("v", "northward wind", "m s-1", "northward_wind", "v_component_of_wind", True),
    VariableInfo("q", "specific humidity", "kg kg-1", "specific_humidity", "specific_humidity", True, True),
    VariableInfo("r", "relative humidity", "%", "relative_humidity", "relative_humidity", True, True),
    VariableInfo("w", "vertical velocity", "Pa s-1", "lagrangian_tendency_of_air_pressure", "vertical_velocity", True),
    VariableInfo("vo", "relative vorticity", "s-1", "atmosphere_relative_vorticity", "vorticity", True),
    VariableInfo("d", "divergence", "s-1", "divergence_of_wind", "divergence", True),
    # single-level variables
    VariableInfo("t2m", "2 metre temperature", "K", "air_temperature", "2m_temperature", aliases=("2t",)),
    VariableInfo("d2m", "2 metre dewpoint temperature", "K", "dew_point_temperature", "2m_dewpoint_temperature", aliases=("2d",)),
    VariableInfo("u10m", "10 metre eastward wind", "m s-1", "eastward_wind", "10m_u_component_of_wind", aliases=("u10", "10u")),
    VariableInfo("v10m", "10 metre northward wind", "m s-1", "northward_wind", "10m_v_component_of_wind", aliases=("v10", "10v")),
    VariableInfo("u100m", "100 metre eastward wind", "m s-1", "eastward_wind", "100m_u_component_of_wind", aliases=("u100", "100u")),
    VariableInfo("v100m", "100 metre northward wind", "m s-1", "northward_wind", "100m_v_component_of_wind", aliases=("v100", "100v")),
    VariableInfo("msl", "mean sea level pressure", "Pa", "air_pressure_at_mean_sea_level", "mean_sea_level_pressure"),
    VariableInfo("sp", "surface pressure", "Pa", "surface_air_pressure", "surface_pressure"),
    VariableInfo("tcwv", "total column water vapour", "kg m-2", "atmosphere_mass_content_of_water_vapor", "total_column_water_vapour", non_negative=True),
    VariableInfo("tp", "total precipitation", "m", "precipitation_amount", "total_precipitation", non_negative=True),
    VariableInfo("tp6h", "6-hourly accumulated precipitation", "kg m-2", "precipitation_amount", None, non_negative=True),
    # static fields
    VariableInfo("orog", "surface geopotential", "m2 s-2", "surface_geopotential", "geopotential_at_surface", aliases=("z_sfc",)),
    VariableInfo("lsm", "land-sea mask", "1", "land_binary_mask", "land_sea_mask"),
)

VARIABLES: dict[str, VariableInfo] = {v.code: v for v in _VARIABLES}
STATIC_CODES = ("orog", "lsm")

_CHANNEL_RE = re.compile(r"^([a-z]+?)(\d+)$")


@dataclass(frozen=True)
class Channel:
    """A parsed channel name: variable code plus pressure level (hPa) or None."""

    name: str
    code: str
    level: int | None

    @property
    def info(self) -> VariableInfo:
        return VARIABLES[self.code]

    def attrs(self) -> dict[str, object]:
        """CF attributes for the channel's data variable."""
        info = self.info
        long_name = info.long_name if self.level is None else f"{info.long_name} at {self.level} hPa"
        attrs: dict[str, object] = {"long_name": long_name, "units": info.units}
        if info.standard_name:
            attrs["standard_name"] = info.standard_name
        if self.level is not None:
            attrs["level"] = self.level
            attrs["level_units"] = "hPa"
        return attrs


def parse_channel(name: str) -> Channel:
    """Parse ``z500`` -> (z, 500); ``t2m`` -> (t2m, None). Unknown names raise."""
    if name in VARIABLES:
        if VARIABLES[name].pressure_level:
            raise MyriadError(f"channel '{name}': pressure-level variable needs a level, e.g. '{name}500'")
        return Channel(name, name, None)
    m = _CHANNEL_RE.match(name)
    if m and m.group(1) in VARIABLES and VARIABLES[m.group(1)].pressure_level:
        return Channel(name, m.group(1), int(m.group(2)))
    known = ", ".join(sorted(VARIABLES))
    raise MyriadError(f"channel '{name}': unknown name (variable codes: {known}; levels as in 'z500')")


def channel_attrs(name: str) -> dict[str, object]:
    """CF attributes of a channel by name."""
    return parse_channel(name).attrs()


def is_non_negative(name: str) -> bool:
    """True for humidity/precipitation-like channels that must stay >= 0."""
    return parse_channel(name).info.non_negative


def code_for_name(name: str) -> str | None:
    """Map any known file/ARCO/CDS variable name to our variable code (or None).

    Accepts our codes, ERA5 long names (``2m_temperature``), CDS NetCDF short
    names (``u10``, ``z``) and cfgrib short names (``2t``, ``10u``).
    """
    if name in VARIABLES:
        return name
    for info in _VARIABLES:
        if name == info.era5_long or name in info.aliases:
            return info.code
    return None


def wind_pairs(channels: list[str]) -> list[tuple[int, int]]:
    """Indices ``(i, j)`` of each eastward wind channel and its northward partner at the same level.

    ``u500`` pairs with ``v500``, ``u10m`` with ``v10m``; a component without
    its partner is left out. In the order of the eastward components.
    """
    index = {name: k for k, name in enumerate(channels)}
    pairs = []
    for k, name in enumerate(channels):
        partner = "v" + name[1:]
        if (parse_channel(name).info.standard_name == "eastward_wind" and partner in index
                and parse_channel(partner).info.standard_name == "northward_wind"):
            pairs.append((k, index[partner]))
    return pairs
