r"""The training loss of a wind pair scored on its rotational and divergent parts (``training.wind_loss: helmholtz``).

A tangent wind splits into a rotational and a divergent part (Helmholtz),
:math:`\mathbf u = \hat{\mathbf r} \times \nabla\psi + \nabla\chi`. With the
streamfunction and velocity potential expanded in orthonormal spherical
harmonics on the unit sphere, the area mean of each part's kinetic energy is a
sum over degrees,

.. math::

    \overline{|\mathbf u_{rot}|^2} = \frac{1}{4\pi} \sum_{lm} c_m\, l(l+1)\, |\psi_{lm}|^2,

and the same with :math:`\chi` for the divergent part. So the scalar fields
:math:`\tilde\psi = \sum_{lm} \sqrt{l(l+1)}\,\psi_{lm} Y_{lm}` and
:math:`\tilde\chi` (the same with :math:`\chi_{lm}`) carry each part's energy
degree by degree: the area-weighted squared error of :math:`\tilde\psi`, or
the adjusted MSE of its spectrum, is that of the rotational wind over the
degrees :math:`1 \le l < L` (:math:`L = \lfloor (n_{lat}+1)/2 \rfloor`), and
likewise for :math:`\tilde\chi` and the divergent wind; with the L1 loss
it is the absolute error of the potentials, not of the wind vectors. torch-harmonics'
vector transform of the wind (m/s) returns :math:`\chi_{lm}` and
:math:`\psi_{lm}` (its spheroidal and toroidal coefficients, on the unit
sphere); they are multiplied by :math:`\sqrt{l(l+1)}` here.

Why score the parts apart: on the planet the divergent wind holds 1e-4 of the
kinetic energy and 8e-4 of its 6-hour change, so scored as the components
``u`` and ``v`` an error as large as the divergent wind itself is lost in the
rotational wind's error. Yet the zonal-mean northward wind is the divergent
wind alone (the rotational part has no zonal mean of ``v``), and it is what
carries mass between latitudes (:mod:`pipeline.data.sources.planet_budget`).
With the split, the pair's two channel slots in the loss carry
:math:`\tilde\psi / s_{rot}` and :math:`\tilde\chi / s_{div}`, where each
:math:`s` is that part's RMS one-step change (``loss_units: tendency``) or its
RMS about the time mean (``normalised``) over training frames
(:func:`wind_part_scales`), so each part counts by how much it changes, as
every other channel does. Both slots take the mean of the pair's channel
weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch_harmonics import InverseRealSHT, RealVectorSHT

from pipeline.grid import Grid
from pipeline.training.dataset import Frames
from pipeline.training.losses import SphericalAMSE, channel_weight_vector
from pipeline.training.normalisation import Normalisation
from pipeline.training.validation import evenly_spaced

PARTS = ("rotational", "divergent")
"""Order of the parts in :func:`wind_part_scales`' second axis."""


class WindPotentials(nn.Module):
    r"""Normalised fields with each wind pair's slots replaced by :math:`(\tilde\psi / s_{rot}, \tilde\chi / s_{div})`.

    Parameters
    ----------
    grid
        The fields' equiangular grid.
    pairs
        ``(u, v)`` channel indices (:func:`pipeline.data.channels.wind_pairs`).
    normalisation
        The fields' per-channel mean and std (the transform runs on physical winds).
    scales
        ``(len(pairs), 2)`` divisors of the rotational and divergent potentials, in m/s; ones for raw potentials.
    """

    def __init__(self, grid: Grid, pairs: list[tuple[int, int]], normalisation: Normalisation,
                 scales: np.ndarray | None = None) -> None:
        super().__init__()
        self.pairs = [tuple(pair) for pair in pairs]
        lmax = SphericalAMSE.degrees(grid)
        mmax = min(lmax, grid.nlon // 2 + 1)
        self.vsht = RealVectorSHT(grid.nlat, grid.nlon, lmax=lmax, mmax=mmax, grid="equiangular").float()
        self.isht = InverseRealSHT(grid.nlat, grid.nlon, lmax=lmax, mmax=mmax, grid="equiangular").float()
        degree = torch.arange(lmax, dtype=torch.float64)
        self.register_buffer("energy_factor", (degree * (degree + 1)).sqrt().float()[:, None], persistent=False)
        self.register_buffer("mean", torch.as_tensor(normalisation.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.as_tensor(normalisation.std, dtype=torch.float32), persistent=False)
        scales = np.ones((len(self.pairs), 2)) if scales is None else np.asarray(scales, dtype=np.float64)
        if scales.shape != (len(self.pairs), 2) or not np.all(np.isfinite(scales) & (scales > 0)):
            raise ValueError(f"scales must be finite and positive, shape ({len(self.pairs)}, 2), got {scales}")
        self.register_buffer("scales", torch.as_tensor(scales, dtype=torch.float32), persistent=False)

    def potentials(self, x: torch.Tensor, pair: int) -> torch.Tensor:
        r""":math:`(\tilde\psi, \tilde\chi)` of pair ``pair`` in m/s, shape ``(*batch, 2, nlat, nlon)``, float32."""
        i, j = self.pairs[pair]
        with torch.autocast(device_type=x.device.type, enabled=False):
            u = x[..., i, :, :].float() * self.std[i] + self.mean[i]
            v = x[..., j, :, :].float() * self.std[j] + self.mean[j]
            spheroidal_toroidal = self.vsht(torch.stack([-v, u], dim=-3)) * self.energy_factor
            divergent, rotational = self.isht(spheroidal_toroidal).unbind(dim=-3)
        return torch.stack([rotational, divergent], dim=-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = list(x.float().unbind(dim=-3))
        for k, (i, j) in enumerate(self.pairs):
            rotational, divergent = self.potentials(x, k).unbind(dim=-3)
            channels[i], channels[j] = rotational / self.scales[k, 0], divergent / self.scales[k, 1]
        return torch.stack(channels, dim=-3)


@torch.no_grad()
def wind_part_scales(frames: Frames, potentials: WindPotentials, quadrature: np.ndarray, n_samples: int,
                     units: str, chunk: int = 64) -> np.ndarray:
    r"""Each pair's rotational and divergent scale in m/s, shape ``(len(pairs), 2)``.

    ``units == "tendency"``: :math:`s = \sqrt{\overline{\sum_{jk} q_{jk} (\Delta\tilde\psi)^2}}`,
    the RMS one-step change of the part's energy-normalised potential over up to
    ``n_samples`` evenly spaced pairs of consecutive frames (equal to the RMS
    change of the part's wind vector); ``"normalised"``: the RMS of the
    potential about its time mean over up to ``n_samples`` frames. The
    potentials' own scales do not enter (:meth:`WindPotentials.potentials` is unscaled).
    """
    q = torch.as_tensor(quadrature, dtype=torch.float64)
    index = evenly_spaced(len(frames) - (1 if units == "tendency" else 0), n_samples)
    squares = torch.zeros(len(potentials.pairs), 2, dtype=torch.float64)
    fields = torch.zeros(len(potentials.pairs), 2, *q.shape, dtype=torch.float64)
    for start in range(0, len(index), chunk):
        part = index[start : start + chunk]
        current = frames.read(part)
        following = frames.read(part + 1) if units == "tendency" else None
        for k in range(len(potentials.pairs)):
            now = potentials.potentials(current, k).double()
            if following is not None:
                change = potentials.potentials(following, k).double() - now
                squares[k] += (change.square() * q).sum(dim=(0, -2, -1))
            else:
                fields[k] += now.sum(dim=0)
                squares[k] += (now.square() * q).sum(dim=(0, -2, -1))
    mean_square = squares / len(index)
    if units != "tendency":
        time_mean = fields / len(index)
        mean_square = mean_square - (time_mean.square() * q).sum(dim=(-2, -1))
    return mean_square.clamp_min(0.0).sqrt().numpy()


def helmholtz_channel_weights(channels: list[str], weights: dict[str, float], pairs: list[tuple[int, int]],
                              units: np.ndarray | None, power: int = 2, divergent_weight: float = 1.0) -> np.ndarray:
    """Loss weights with each pair's two slots at the mean of the pair's weights and unit 1 (the scales are
    applied before), the divergent slot's then times ``divergent_weight``."""
    pair_weights = dict(weights)
    unit = np.ones(len(channels)) if units is None else np.array(units, dtype=np.float64)
    for i, j in pairs:
        mean_weight = 0.5 * (weights.get(channels[i], 1.0) + weights.get(channels[j], 1.0))
        pair_weights[channels[i]] = pair_weights[channels[j]] = mean_weight
        unit[i] = unit[j] = 1.0
    vector = channel_weight_vector(channels, pair_weights, unit, power)
    vector[[j for _, j in pairs]] *= divergent_weight
    return vector


class HelmholtzWindLoss(nn.Module):
    """A loss of the fields after :class:`WindPotentials` (its weights from :func:`helmholtz_channel_weights`)."""

    def __init__(self, loss: nn.Module, potentials: WindPotentials) -> None:
        super().__init__()
        self.loss = loss
        self.potentials = potentials

    def per_channel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss.per_channel(self.potentials(prediction), self.potentials(target))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(self.potentials(prediction), self.potentials(target))
