"""The one small interface every reanalysis source implements.

A source lists the times it can provide and reads a block of times as an
``xarray.Dataset`` already in canonical form (DESIGN.md section 3):

* one float32 data variable per configured channel, dims
  ``(time, latitude, longitude)``, named ``z500``, ``t2m``...;
* ``latitude`` descending 90 -> -90 with poles, ``longitude`` 0 -> 360
  ascending, exactly the configured :class:`~pipeline.grid.Grid`;
* ``time`` as datetime64[ns], equal to the requested times;
* CF attributes from :mod:`pipeline.data.channels`.

Static fields (orography, land-sea mask) come from :meth:`Source.static_fields`
as variables with dims ``(latitude, longitude)``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import pandas as pd
import xarray as xr


@runtime_checkable
class Source(Protocol):
    """A provider of analysis fields on the canonical grid and channel names."""

    name: str
    """Short name written to the store's ``source`` attribute."""
    sequential: bool
    """True when blocks must be read in time order (a simulation)."""
    network: bool
    """True when reads cross the network (the flow retries them)."""

    def available_times(self) -> pd.DatetimeIndex:
        """All valid times this source can provide, sorted."""
        ...

    def read_block(self, times: pd.DatetimeIndex) -> xr.Dataset:
        """Read ``times`` as a canonical Dataset (see module docstring)."""
        ...

    def static_fields(self) -> xr.Dataset:
        """Configured static fields, dims (latitude, longitude); may be empty."""
        ...
