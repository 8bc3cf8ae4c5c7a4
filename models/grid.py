r"""Coordinates of the equiangular grid the networks run on, as tensors.

The grid of :class:`pipeline.grid.Grid` (models do not import the pipeline):
``nlat`` latitudes from 90 to -90 degrees, poles included, and ``nlon``
longitudes :math:`360\,k / n_{lon}` degrees, :math:`k = 0 \ldots n_{lon} - 1`.
"""

from __future__ import annotations

import torch


def latitudes(nlat: int, device: torch.device | str | None = None) -> torch.Tensor:
    r"""Latitudes in radians, shape ``(nlat,)`` float64, from :math:`\pi/2` to :math:`-\pi/2`."""
    return torch.deg2rad(torch.linspace(90.0, -90.0, nlat, dtype=torch.float64, device=device))


def longitudes(nlon: int, device: torch.device | str | None = None) -> torch.Tensor:
    r"""Longitudes in radians, shape ``(nlon,)`` float64: :math:`2\pi k / n_{lon}`."""
    return 2 * torch.pi * torch.arange(nlon, dtype=torch.float64, device=device) / nlon
