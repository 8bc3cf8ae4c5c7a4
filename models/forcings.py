r"""Known forcings of time as network inputs: where in the year and in the day a state is valid.

The atmosphere, and the embedded planet, are driven by the sun. A network that
sees only the state must guess the season from it; in a free run of years it
loses the thread (measured on the planet, whose equilibrium layer depth follows
a seasonal cycle: without a time input the 9-year DYffusion forecaster's
hemispheric z500 contrast kept growing through the second half of its first
year, to 4.6x the planet's seasonal extreme by the end of year 2). As ACE and
Spherical DYffusion do with their forcing fields, the networks get channels computed from the valid
time :math:`t` of their input state (POSIX seconds, UTC), appended like the
static fields:

- ``year_progress`` (2 channels, uniform on the sphere):
  :math:`\cos 2\pi p_y,\ \sin 2\pi p_y` with
  :math:`p_y = (t - t_{2000}) / Y`, :math:`Y` = 365.25 days (the Julian year,
  also the planet's ``source.year_days`` default) and :math:`t_{2000}` =
  2000-01-01T00:00 UTC;
- ``day_progress`` (2 channels, varying with longitude :math:`\lambda`):
  :math:`\cos 2\pi p_d,\ \sin 2\pi p_d` with the local mean solar time
  :math:`p_d = (t \bmod 86400\,\mathrm{s}) / 86400\,\mathrm{s} + \lambda / 360°`.

Only torch and numpy here; times are converted with :func:`posix_seconds`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import numpy as np
import torch

FORCING_CHANNELS: dict[str, int] = {"year_progress": 2, "day_progress": 2}
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

    Accepts a float64 or int64 tensor or an array of seconds, numpy ``datetime64`` values (scalar
    or array), a pandas ``DatetimeIndex`` or Timestamp, or a naive (UTC) or
    aware ``datetime``.
    """
    if isinstance(times, torch.Tensor):
        if times.dtype not in (torch.float64, torch.int64):
            raise ValueError(f"valid times as a tensor must be float64 or int64 POSIX seconds, got {times.dtype} "
                             "(float32 rounds times of this century to about a minute)")
        seconds = times.to(torch.float64)
    else:
        if isinstance(times, _dt.datetime):
            times = np.datetime64(times.astimezone(_dt.timezone.utc).replace(tzinfo=None) if times.tzinfo else times, "ns")
        values = np.asarray(times)
        if np.issubdtype(values.dtype, np.datetime64):
            values = values.astype("datetime64[ns]").astype(np.int64) / 1e9
        seconds = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if batch is not None:
        if seconds.ndim == 0:
            seconds = seconds.expand(batch)
        elif tuple(seconds.shape) != (batch,):
            raise ValueError(f"valid times must be one time or one per batch row ({batch}), got shape {tuple(seconds.shape)}")
    return seconds


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
            phase = 2 * torch.pi * torch.remainder(seconds - EPOCH_2000, YEAR_SECONDS) / YEAR_SECONDS
            for wave in (torch.cos(phase), torch.sin(phase)):
                fields.append(wave[:, None, None].expand(batch, nlat, nlon))
        else:  # day_progress
            longitude = torch.arange(nlon, dtype=torch.float64, device=seconds.device) / nlon
            phase = 2 * torch.pi * (torch.remainder(seconds, DAY_SECONDS)[:, None] / DAY_SECONDS + longitude[None, :])
            for wave in (torch.cos(phase), torch.sin(phase)):
                fields.append(wave[:, None, :].expand(batch, nlat, nlon))
    if not fields:
        return torch.zeros(batch, 0, nlat, nlon, device=seconds.device)
    return torch.stack(fields, dim=1).float()
