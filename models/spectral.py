r"""Real spherical harmonic transforms in a real "pair layout", for the SFNO's blocks.

These compute exactly the transforms of torch-harmonics' :class:`RealSHT` and
:class:`InverseRealSHT` (whose precomputed Legendre matrices they reuse), with
fewer and larger kernels and no complex tensors, which is what a training
step on a small grid is bound by on a CPU.

The real SHT of a field :math:`f` on an ``nlat x nlon`` grid is a Fourier
analysis in longitude followed by a Legendre quadrature per order :math:`m`,

.. math::

    \tilde f_m(\theta_k) = \frac{1}{N_\lambda}\sum_j f(\theta_k, \lambda_j)\, e^{-i m \lambda_j}, \qquad
    a_{lm} = \sum_k w_{mlk}\, \tilde f_m(\theta_k),

with ``w = RealSHT.weights`` (:math:`2\pi` times the quadrature weights times
the normalised associated Legendre functions). The inverse is

.. math::

    g_m(\theta_k) = \sum_l P_{mkl}\, a_{lm}, \qquad
    f(\theta_k, \lambda_j) = \sum_{m < M} c_m\, \mathrm{Re}\big(g_m(\theta_k)\, e^{i m \lambda_j}\big),

``P = InverseRealSHT.pct``, :math:`c_0 = 1` (and 1 for a Nyquist order),
:math:`c_m = 2` otherwise; the imaginary part of the order 0 (and Nyquist)
term is dropped, as a real inverse FFT does.

Pair layout: coefficients are a real tensor of shape ``(mmax, 2, *batch, lmax)``
with ``[m, 0] = Re a_lm`` and ``[m, 1] = Im a_lm``, so the Legendre step is one
batched matrix product over the ``2 * mmax`` (order, part) pairs and the
Fourier step one matrix product with a real DFT matrix (grids of at most
:data:`DENSE_DFT_MAX_NLON` longitudes, where that beats an FFT call) or a
real FFT (larger grids, where :math:`O(n \log n)` wins).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_harmonics import InverseRealSHT, InverseRealVectorSHT, RealSHT, RealVectorSHT

DENSE_DFT_MAX_NLON = 128
"""Longitude counts up to which the Fourier step is a matrix product instead of an FFT."""


def harmonic_factors(nlon: int, mmax: int) -> torch.Tensor:
    """:math:`c_m`: 1 for the order 0 and a Nyquist order, 2 for the others (float64)."""
    factors = torch.full((mmax,), 2.0, dtype=torch.float64)
    factors[0] = 1.0
    if nlon % 2 == 0 and mmax > nlon // 2:
        factors[nlon // 2] = 1.0
    return factors


def _real_parts_kept(nlon: int, mmax: int) -> torch.Tensor:
    """1 for each (order, part) pair the real inverse transform keeps, 0 for Im of order 0 and Nyquist, shape (mmax, 2)."""
    kept = torch.ones(mmax, 2, dtype=torch.float64)
    kept[0, 1] = 0.0
    if nlon % 2 == 0 and mmax > nlon // 2:
        kept[nlon // 2, 1] = 0.0
    return kept


def _check_orders(transform: RealSHT | InverseRealSHT) -> None:
    if transform.mmax > transform.nlon // 2 + 1:
        raise ValueError(f"mmax {transform.mmax} exceeds the {transform.nlon // 2 + 1} orders of {transform.nlon} longitudes")


def _order_angles(nlon: int, mmax: int) -> torch.Tensor:
    """``2 pi m j / nlon`` for orders ``m < mmax`` and longitudes ``j``, shape (mmax, nlon), float64."""
    return 2.0 * math.pi * torch.outer(torch.arange(mmax, dtype=torch.float64), torch.arange(nlon, dtype=torch.float64)) / nlon


class _PairLayoutTransform(nn.Module):
    """What both pair-layout transforms share: the grid and truncation of a checked torch-harmonics transform."""

    def __init__(self, transform: RealSHT | InverseRealSHT) -> None:
        super().__init__()
        _check_orders(transform)
        self.nlat, self.nlon, self.lmax, self.mmax = transform.nlat, transform.nlon, transform.lmax, transform.mmax
        self.dense = transform.nlon <= DENSE_DFT_MAX_NLON

    def extra_repr(self) -> str:
        return f"nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, mmax={self.mmax}, dense_dft={self.dense}"


class SpectralAnalysis(_PairLayoutTransform):
    """The real SHT of ``sht``: ``(*batch, nlat, nlon)`` -> pair layout ``(mmax, 2, *batch, lmax)``, float32."""

    def __init__(self, sht: RealSHT) -> None:
        super().__init__(sht)
        # (m, l, k) -> (m, c, k, l): the same quadrature for both parts
        legendre = sht.weights.double().transpose(1, 2)
        self.register_buffer("legendre", legendre[:, None].expand(-1, 2, -1, -1).reshape(2 * self.mmax, self.nlat, self.lmax).float().contiguous(), persistent=False)
        if self.dense:
            angle = _order_angles(self.nlon, self.mmax)
            dft = torch.stack([torch.cos(angle), -torch.sin(angle)], dim=1) / self.nlon  # (m, c, j)
            self.register_buffer("dft", dft.reshape(2 * self.mmax, self.nlon).float(), persistent=False)

    def fourier(self, x: torch.Tensor) -> torch.Tensor:
        """Longitude Fourier coefficients, shape ``(2 * mmax, N, nlat)`` for ``N`` fields."""
        fields = x.reshape(-1, self.nlat, self.nlon)
        n = fields.shape[0]
        if self.dense:
            return (self.dft @ fields.reshape(n * self.nlat, self.nlon).t()).view(2 * self.mmax, n, self.nlat)
        spectrum = torch.view_as_real(torch.fft.rfft(fields, dim=-1, norm="forward")[..., : self.mmax])  # (N, k, m, c)
        return spectrum.permute(2, 3, 0, 1).reshape(2 * self.mmax, n, self.nlat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-2]
        coefficients = torch.bmm(self.fourier(x), self.legendre)  # (2m, N, l)
        return coefficients.view(self.mmax, 2, *batch, self.lmax)


class SpectralSynthesis(_PairLayoutTransform):
    """The inverse real SHT of ``isht``: pair layout ``(mmax, 2, *batch, lmax)`` -> ``(*batch, nlat, nlon)``, float32."""

    def __init__(self, isht: InverseRealSHT) -> None:
        super().__init__(isht)
        # (m, k, l) -> (m, c, l, k); the parts a real inverse transform drops get a zero matrix
        legendre = isht.pct.double().transpose(1, 2)[:, None] * _real_parts_kept(self.nlon, self.mmax)[:, :, None, None]
        self.register_buffer("legendre", legendre.reshape(2 * self.mmax, self.lmax, self.nlat).float().contiguous(), persistent=False)
        if self.dense:
            angle = _order_angles(self.nlon, self.mmax)
            factors = harmonic_factors(self.nlon, self.mmax)[:, None]
            idft = torch.stack([factors * torch.cos(angle), -factors * torch.sin(angle)], dim=1)  # (m, c, j)
            self.register_buffer("idft", idft.reshape(2 * self.mmax, self.nlon).float(), persistent=False)

    def fourier(self, g: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        """Fields from per-latitude Fourier coefficients ``g`` of shape ``(2 * mmax, N, nlat)``."""
        n = g.shape[1]
        if self.dense:
            return (g.reshape(2 * self.mmax, n * self.nlat).t() @ self.idft).view(*batch, self.nlat, self.nlon)
        spectrum = torch.view_as_complex(g.view(self.mmax, 2, n, self.nlat).permute(2, 3, 0, 1).contiguous())
        return torch.fft.irfft(spectrum, n=self.nlon, dim=-1, norm="forward").view(*batch, self.nlat, self.nlon)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        batch = coefficients.shape[2:-1]
        g = torch.bmm(coefficients.reshape(2 * self.mmax, -1, self.lmax), self.legendre)  # (2m, N, k)
        return self.fourier(g, batch)


class BandLimit(nn.Module):
    r"""Projection :math:`P_L = \mathrm{SHT}^{-1}\,\mathrm{SHT}` onto the harmonics of ``sht`` (same grid as ``isht``).

    The two Legendre steps are one precomputed ``nlat x nlat`` matrix per
    (order, part), :math:`Q_m = w_m^\top P_m^\top`, between the forward and
    inverse Fourier steps: the same operator as the transform pair, one
    matrix product fewer.
    """

    def __init__(self, sht: RealSHT, isht: InverseRealSHT) -> None:
        super().__init__()
        if (sht.nlat, sht.nlon, sht.lmax, sht.mmax) != (isht.nlat, isht.nlon, isht.lmax, isht.mmax):
            raise ValueError("the band limit needs a forward and an inverse transform of the same grid and truncation")
        self.analysis = SpectralAnalysis(sht)
        self.synthesis = SpectralSynthesis(isht)
        projector = torch.bmm(self.analysis.legendre.double(), self.synthesis.legendre.double())  # (2m, k, k)
        self.register_buffer("projector", projector.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.synthesis.fourier(torch.bmm(self.analysis.fourier(x), self.projector), x.shape[:-2])


class VectorBandLimit(nn.Module):
    r"""Projection of a wind field :math:`(u, v)` onto the vector spherical harmonics of degree and order below ``lmax``/``mmax``.

    A tangent field splits into a spheroidal and a toroidal part,
    :math:`\mathbf u = \nabla\chi + \hat{\mathbf r} \times \nabla\psi`
    (velocity potential and streamfunction); the projection keeps the degrees
    :math:`1 \le l <` ``lmax`` and orders :math:`m <` ``mmax`` of
    :math:`\chi` and :math:`\psi`:
    :math:`P^{vec}_L = \mathrm{VSHT}^{-1}\,\mathrm{VSHT}` of torch-harmonics,
    whose components are colatitude and longitude,
    :math:`(u_\theta, u_\lambda) = (-v, u)`.

    Why not the scalar projection of each component: a smooth wind crossing a
    pole has :math:`u, v \propto \cos\lambda, \sin\lambda` on the pole
    row (order 1, zero zonal mean), while every scalar harmonic with
    :math:`m > 0` vanishes there, so scalar-projected components can only be
    constant along the pole row: the wrong pattern, with a free zonal mean
    that nothing ties to zero. Vector harmonics have exactly the order-1
    pattern at the poles and a zero zonal mean there. Both components must be
    in the same physical units (the projection mixes them). Runs in float32
    with autocast disabled; inputs of shape ``(*batch, nlat, nlon)``.
    """

    def __init__(self, nlat: int, nlon: int, lmax: int, mmax: int, grid: str = "equiangular") -> None:
        super().__init__()
        self.vsht = RealVectorSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()
        self.ivsht = InverseRealVectorSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=u.device.type, enabled=False):
            colatitude_longitude = torch.stack([-v.float(), u.float()], dim=-3)
            projected = self.ivsht(self.vsht(colatitude_longitude))
        return projected[..., 1, :, :], -projected[..., 0, :, :]


def pair_layout(coefficients: torch.Tensor) -> torch.Tensor:
    """Complex ``(*batch, lmax, mmax)`` (torch-harmonics' layout) -> pair layout ``(mmax, 2, *batch, lmax)``."""
    pairs = torch.view_as_real(coefficients)  # (*batch, l, m, c)
    n = pairs.ndim
    return pairs.permute(n - 2, n - 1, *range(n - 3), n - 3)


def complex_layout(pairs: torch.Tensor) -> torch.Tensor:
    """Pair layout ``(mmax, 2, *batch, lmax)`` -> complex ``(*batch, lmax, mmax)``."""
    n = pairs.ndim
    return torch.view_as_complex(pairs.permute(*range(2, n - 1), n - 1, 0, 1).contiguous())
