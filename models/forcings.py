r"""Known forcings of time as network inputs: where in the year and in the day a state is valid.

The atmosphere, and the embedded planet, are driven by the sun. A network that
sees only the state must guess the season from it, and in a free run it can
lose the thread: without a time input, the 9-year DYffusion forecaster's
hemispheric z500 contrast on the planet (whose equilibrium layer depth follows
a seasonal cycle) grew through the second half of its first year to 4.6x the
planet's seasonal extreme by the end of year 2. Forcings make the season
known; whether a network learns to follow it is a matter of training (README,
"Long runs"). As ACE and Spherical DYffusion do with their forcing fields,
the networks get channels computed from the valid time :math:`t` of their
input state (POSIX seconds, UTC), appended like the static fields:

- ``year_progress`` (2 channels, uniform on the sphere):
  :math:`\cos 2\pi p_y,\ \sin 2\pi p_y` with
  :math:`p_y = (t - t_{2000}) / Y`, :math:`Y` = 365.25 days (the Julian year,
  also the planet's ``source.year_days`` default) and :math:`t_{2000}` =
  2000-01-01T00:00 UTC;
- ``day_progress`` (2 channels, varying with longitude :math:`\lambda`):
  :math:`\cos 2\pi p_d,\ \sin 2\pi p_d` with the local mean solar time
  :math:`p_d = (t \bmod 86400\,\mathrm{s}) / 86400\,\mathrm{s} + \lambda / 360°`;
- ``toa_insolation`` (1 channel): the instantaneous top-of-atmosphere solar
  flux over the solar constant, :math:`Q/S_0 = E_0 \max(0,\ \sin\phi\sin\delta
  + \cos\phi\cos\delta\cos H)` with the hour angle :math:`H = 2\pi p_d - \pi`;
- ``daily_insolation`` (1 channel): its mean over the day,
  :math:`Q/S_0 = \frac{E_0}{\pi}(h_0 \sin\phi\sin\delta + \cos\phi\cos\delta\sin h_0)`,
  :math:`\cos h_0 = -\tan\phi\tan\delta` clipped to :math:`[-1, 1]` (polar night and day),
  the forcing of a model without a daily cycle (the planet).

The solar declination :math:`\delta` and the distance factor
:math:`E_0 = (\bar d / d)^2` are Spencer's (1971) Fourier series in the year
angle :math:`\gamma = 2\pi p_y` (errors below 0.001 rad and 0.01 %); the
equation of time (at most 16 minutes) is neglected.

Only torch and numpy here; times are converted with :func:`posix_seconds`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import numpy as np
import torch

from models.grid import latitudes, longitudes

FORCING_CHANNELS: dict[str, int] = {"year_progress": 2, "day_progress": 2, "toa_insolation": 1, "daily_insolation": 1}
"""Known forcings and the input channels each adds."""

YEAR_SECONDS = 365.25 * 86400.0
DAY_SECONDS = 86400.0
EPOCH_2000 = 946684800.0
"""2000-01-01T00:00 UTC in POSIX seconds."""


def check_forcings(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or ValueError for an unknown or repeated forcing."""
    names = tuple(names)
    unknown = [n for n in names if n not in FORCING_CHANNELS]
    if unknown:
        raise ValueError(f"unknown forcing(s) {unknown}; known: {sorted(FORCING_CHANNELS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"forcings repeated: {list(names)}")
    return names


def n_forcing_channels(names: Sequence[str]) -> int:
    """Input channels the forcings ``names`` add."""
    return sum(FORCING_CHANNELS[n] for n in check_forcings(names))


def posix_seconds(times: object, batch: int | None = None) -> torch.Tensor:
    """Valid times as a float64 tensor of POSIX seconds (UTC), broadcast to ``(batch,)`` when given.

    Accepts float64 or int64 seconds (tensor or array), numpy ``datetime64``
    values (scalar or array), a pandas ``DatetimeIndex`` or Timestamp, or a
    ``datetime`` (naive ones are taken as UTC, aware ones converted). One time (also of
    shape ``(1,)``) serves every batch row.
    """
    if isinstance(times, torch.Tensor):
        if times.dtype not in (torch.float64, torch.int64):
            raise ValueError(f"valid times as a tensor must be float64 or int64 POSIX seconds, got {times.dtype} "
                             "(float32 rounds times of this century to about a minute)")
        seconds = times.to(torch.float64)
    else:
        if getattr(times, "tz", None) is not None:  # an aware pandas DatetimeIndex
            times = times.tz_convert("UTC").tz_localize(None)
        if isinstance(times, _dt.datetime):
            times = np.datetime64(times.astimezone(_dt.timezone.utc).replace(tzinfo=None) if times.tzinfo else times, "ns")
        values = np.asarray(times)
        if np.issubdtype(values.dtype, np.datetime64):
            values = values.astype("datetime64[ns]").astype(np.int64) / 1e9
        elif np.issubdtype(values.dtype, np.floating) and values.dtype != np.float64:
            raise ValueError(f"valid times in seconds must be float64 or int64, got {values.dtype} "
                             "(float32 rounds times of this century to about a minute)")
        seconds = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if batch is not None:
        if seconds.numel() == 1:
            seconds = seconds.reshape(()).expand(batch)
        elif tuple(seconds.shape) != (batch,):
            raise ValueError(f"valid times must be one time or one per batch row ({batch}), got shape {tuple(seconds.shape)}")
    return seconds


def year_angle(seconds: torch.Tensor) -> torch.Tensor:
    r""":math:`\gamma = 2\pi p_y`, shape ``(B,)``."""
    return 2 * torch.pi * torch.remainder(seconds - EPOCH_2000, YEAR_SECONDS) / YEAR_SECONDS


def _local_day_phase(seconds: torch.Tensor, nlon: int) -> torch.Tensor:
    r""":math:`2\pi p_d` at every longitude, shape ``(B, nlon)``."""
    day_phase = 2 * torch.pi * torch.remainder(seconds, DAY_SECONDS) / DAY_SECONDS
    return day_phase[:, None] + longitudes(nlon, seconds.device)[None, :]


def solar_declination_and_distance(seconds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Declination :math:`\delta` (rad) and distance factor :math:`E_0 = (\bar d/d)^2`, each ``(B,)`` (Spencer 1971)."""
    g = year_angle(seconds)
    declination = (0.006918 - 0.399912 * torch.cos(g) + 0.070257 * torch.sin(g) - 0.006758 * torch.cos(2 * g)
                   + 0.000907 * torch.sin(2 * g) - 0.002697 * torch.cos(3 * g) + 0.00148 * torch.sin(3 * g))
    distance = (1.000110 + 0.034221 * torch.cos(g) + 0.001280 * torch.sin(g) + 0.000719 * torch.cos(2 * g)
                + 0.000077 * torch.sin(2 * g))
    return declination, distance


def toa_insolation(seconds: torch.Tensor, nlat: int, nlon: int) -> torch.Tensor:
    r"""Instantaneous :math:`Q/S_0`, shape ``(B, nlat, nlon)`` float64."""
    declination, distance = solar_declination_and_distance(seconds)
    lat = latitudes(nlat, seconds.device)
    hour_angle = _local_day_phase(seconds, nlon) - torch.pi
    cos_zenith = (torch.sin(lat)[None, :, None] * torch.sin(declination)[:, None, None]
                  + torch.cos(lat)[None, :, None] * torch.cos(declination)[:, None, None] * torch.cos(hour_angle)[:, None, :])
    return distance[:, None, None] * cos_zenith.clamp(min=0.0)


def daily_insolation(seconds: torch.Tensor, nlat: int, nlon: int) -> torch.Tensor:
    r"""Daily-mean :math:`Q/S_0`, shape ``(B, nlat, nlon)`` float64 (uniform along longitude)."""
    declination, distance = solar_declination_and_distance(seconds)
    lat = latitudes(nlat, seconds.device)[None, :]
    d = declination[:, None]
    cos_lat = torch.cos(lat).clamp(min=1e-12)  # the poles: tan(lat) finite but huge, the clip below decides
    sunset = torch.arccos((-torch.sin(lat) * torch.sin(d) / (cos_lat * torch.cos(d))).clamp(-1.0, 1.0))
    mean = distance[:, None] / torch.pi * (sunset * torch.sin(lat) * torch.sin(d) + cos_lat * torch.cos(d) * torch.sin(sunset))
    return mean[:, :, None].expand(-1, -1, nlon)


def forcing_fields(names: Sequence[str], seconds: torch.Tensor, nlat: int, nlon: int) -> torch.Tensor:
    """The forcing channels at valid times ``seconds`` (shape ``(B,)``): ``(B, n, nlat, nlon)`` float32.

    The grid is equiangular with longitudes ``360 k / nlon`` degrees
    (:class:`pipeline.grid.Grid`); the channels follow ``names``' order.
    """
    seconds = seconds.to(torch.float64)
    batch = seconds.shape[0]
    fields = []
    for name in check_forcings(names):
        if name == "year_progress":
            phase = year_angle(seconds)
            for wave in (torch.cos(phase), torch.sin(phase)):
                fields.append(wave[:, None, None].expand(batch, nlat, nlon))
        elif name == "day_progress":
            phase = _local_day_phase(seconds, nlon)
            for wave in (torch.cos(phase), torch.sin(phase)):
                fields.append(wave[:, None, :].expand(batch, nlat, nlon))
        elif name == "toa_insolation":
            fields.append(toa_insolation(seconds, nlat, nlon))
        else:  # daily_insolation
            fields.append(daily_insolation(seconds, nlat, nlon))
    if not fields:
        return torch.zeros(batch, 0, nlat, nlon, device=seconds.device)
    return torch.stack(fields, dim=1).float()
