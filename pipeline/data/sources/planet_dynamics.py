"""Fast real-arithmetic tendency of the shallow-water equations on the sphere.

:class:`SpectralShallowWater` is torch-harmonics' ``ShallowWaterSolver`` with
its nonlinear tendency (``dudtspec``) re-expressed as a few batched real
matrix products, so that one solver step costs about twenty small torch
operations instead of several hundred. The mathematics is the parent's (and
is tested against it to round-off):

.. math::

    \\partial_t \\Phi = -\\nabla\\cdot(\\Phi\\,\\mathbf u), \\qquad
    \\partial_t \\zeta = -\\nabla\\cdot((\\zeta + f)\\,\\mathbf u), \\qquad
    \\partial_t \\delta = \\mathbf k\\cdot\\nabla\\times((\\zeta + f)\\,\\mathbf u)
        - \\nabla^2\\big(\\Phi + \\tfrac12|\\mathbf u|^2\\big),

with :math:`\\Phi = g h` the geopotential, :math:`\\zeta` the relative
vorticity, :math:`\\delta` the divergence, :math:`f = 2\\Omega\\sin\\varphi`
and :math:`\\mathbf u = \\mathbf k\\times\\nabla\\psi + \\nabla\\chi`,
:math:`\\psi = \\nabla^{-2}\\zeta`, :math:`\\chi = \\nabla^{-2}\\delta`.

Spectral layout
---------------
The parent keeps a complex tensor ``uspec`` of shape ``(3, lmax, mmax)`` with
the orthonormal coefficients of (Phi, zeta, delta). Here the same numbers live
in a real tensor ``X`` of shape ``(mmax, 6, lmax)`` whose middle axis holds
``(Re Phi, Im Phi, Re zeta, Im zeta, Re delta, Im delta)`` (see
:meth:`SpectralShallowWater.to_real` and
:meth:`~SpectralShallowWater.to_complex`).

A spherical harmonic transform factors into a Legendre sum over the degree l
for each order m and a Fourier sum over longitude. Both are real matrix
products here: the Legendre sums are one batched product over m (the scalar,
d/dtheta and m/sin(theta) tables of the parent's transforms stacked), the
Fourier sums are products with cosine/sine matrices (at these sizes a dense
product beats an FFT). Small constant "mixing" matrices combine real and
imaginary parts into winds (synthesis) and into divergence and curl
(analysis) with torch-harmonics' vector-transform conventions. The layouts
are chosen so that no step needs a transposed copy.

Grid fields come out longitude-major, shape ``(nlon, 5, nlat)``, in the order
:data:`GRID_FIELDS`; latitude runs 90 -> -90 (index 0 is the north pole) and
longitude 0 -> 360, as in :class:`pipeline.grid.Grid`.
"""

from __future__ import annotations

import torch
from torch_harmonics.examples import ShallowWaterSolver

from pipeline.grid import EARTH_RADIUS_M

GRID_FIELDS = ("geopotential", "vorticity", "divergence", "u", "v")
"""Order of the fields on the middle axis of :meth:`SpectralShallowWater.synthesize`."""

SPECTRAL_COLUMNS = ("geopotential", "vorticity", "divergence")
"""Fields of the real spectral state; each takes two columns (real, imaginary)."""

GRAVITY = 9.80616
"""Gravitational acceleration (m s-2), torch-harmonics' value."""

OMEGA = 7.292e-5
"""Planetary rotation rate (rad s-1), Earth's."""

_SCALAR, _D_THETA, _D_LAMBDA = 0, 1, 2  # Legendre blocks of the synthesis
_W_SCALAR, _W0, _W1 = 0, 1, 2  # Legendre blocks of the analysis
_RE, _IM = 0, 1


class SpectralShallowWater(ShallowWaterSolver):
    """Shallow-water solver on an equiangular grid with a fast real-layout tendency.

    Parameters
    ----------
    nlat, nlon
        Equiangular grid with poles (latitude 90 -> -90).
    dt
        Time step in seconds (sets the parent's hyperdiffusion factor).
    mean_depth
        Mean layer depth H in metres (the parent's ``havg``).

    Notes
    -----
    The spectral truncation is torch-harmonics' default for equiangular grids,
    ``lmax = mmax = min((nlat + 1) // 2, nlon // 2 + 1)``, at which quadratic
    products are integrated exactly by the Clenshaw-Curtis rule of the grid.
    """

    fast_dtype = torch.float64
    """Floating type of the real layout (float32 was measured only ~15 % faster at 33x64)."""

    def __init__(self, nlat: int, nlon: int, dt: float, mean_depth: float) -> None:
        super().__init__(
            nlat,
            nlon,
            dt,
            lmax=(nlat + 1) // 2,
            grid="equiangular",
            radius=EARTH_RADIUS_M,
            omega=OMEGA,
            gravity=GRAVITY,
            havg=mean_depth,
        )
        nm, nk = self.mmax, nlat
        radius = float(self.radius)
        lap = self.lap[:, 0]  # -l(l+1)/a^2, shape (lmax,)
        invlap_over_a = self.invlap[:, 0] / radius  # -a/(l(l+1)), 0 at l=0

        # synthesis: X (m, 6, l) @ [P | c_l dP/dtheta | c_l m P/sin theta] (m, l, 3k)
        pct = self.isht.pct  # (m, k, l)
        dpct = self.ivsht.dpct  # (2, m, k, l)
        tables = torch.cat((pct, dpct[0] * invlap_over_a, dpct[1] * invlap_over_a), dim=1)
        self._buffer("synthesis_legendre", tables.transpose(1, 2))
        self._buffer("synthesis_mixing", _synthesis_mixing().expand(nm, -1, -1))

        # analysis: F (m, 12, k) @ [-lap W | lap a W0 | lap a W1]^T (m, k, 3l)
        w_scalar = self.sht.weights * (-lap)[None, :, None]  # (m, l, k)
        w_vector = self.vsht.weights * (lap * radius)[None, None, :, None]  # (2, m, l, k)
        tables = torch.cat((w_scalar, w_vector[0], w_vector[1]), dim=1)
        self._buffer("analysis_legendre", tables.transpose(1, 2))
        self._buffer("analysis_mixing", _analysis_mixing().expand(nm, -1, -1))
        self._buffer("minus_laplacian", (-lap).reshape(1, 1, -1))

        # Fourier sums over longitude with irfft/rfft "forward" normalisation, columns (m, re/im)
        lon = self.lons.reshape(-1)
        m = torch.arange(nm, dtype=torch.float64)
        phase = m[:, None] * lon[None, :]  # (m, nlon)
        weight = torch.where(m == 0, 1.0, 2.0)[:, None]
        inverse = torch.stack((weight * torch.cos(phase), -weight * torch.sin(phase)), dim=1)  # (m, 2, nlon)
        forward = torch.stack((torch.cos(phase), -torch.sin(phase)), dim=1) / nlon
        self._buffer("inverse_dft", inverse.reshape(2 * nm, nlon).T)  # (nlon, 2m)
        self._buffer("forward_dft", forward.reshape(2 * nm, nlon))  # (2m, nlon)

        # carriers of the fluxes: (q, q, Phi, Phi, u, v) times (u, v), q = zeta + f
        self._buffer("carrier_index", torch.tensor([1, 1, 0, 0, 3, 4]), cast=False)
        coriolis = torch.zeros(6, nk, dtype=torch.float64)
        coriolis[:2] = self.coriolis.reshape(1, nk)
        self._buffer("carrier_offset", coriolis)

    def _buffer(self, name: str, value: torch.Tensor, cast: bool = True) -> None:
        value = value.to(self.fast_dtype) if cast else value
        self.register_buffer(name, value.contiguous(), persistent=False)

    @property
    def spectral_shape(self) -> tuple[int, int, int]:
        """Shape ``(mmax, 6, lmax)`` of the real spectral state."""
        return (self.mmax, 2 * len(SPECTRAL_COLUMNS), self.lmax)

    # ------------------------------------------------------------------ layout

    def to_real(self, uspec: torch.Tensor) -> torch.Tensor:
        """Complex ``(3, lmax, mmax)`` coefficients -> real state ``(mmax, 6, lmax)``."""
        real = torch.view_as_real(uspec).permute(2, 0, 3, 1)  # (m, field, re/im, l)
        return real.reshape(self.spectral_shape).to(self.fast_dtype).contiguous()

    def to_complex(self, state: torch.Tensor) -> torch.Tensor:
        """Real state ``(mmax, 6, lmax)`` -> complex ``(3, lmax, mmax)`` coefficients."""
        nm, _, nl = self.spectral_shape
        real = state.reshape(nm, 3, 2, nl).permute(1, 3, 0, 2).to(torch.float64).contiguous()
        return torch.view_as_complex(real)

    # ------------------------------------------------------------------ transforms

    def synthesize(self, state: torch.Tensor) -> torch.Tensor:
        """Grid fields ``(nlon, 5, nlat)`` in the order :data:`GRID_FIELDS` from the real state.

        Geopotential, vorticity and divergence are scalar syntheses; the winds
        are ``u = -(1/a) d(psi)/d(phi) + (1/(a cos phi)) d(chi)/d(lambda)`` and
        ``v = (1/(a cos phi)) d(psi)/d(lambda) + (1/a) d(chi)/d(phi)``.
        """
        nm, _, _ = self.spectral_shape
        nk = self.nlat
        legendre = torch.bmm(state, self.synthesis_legendre)  # (m, 6, 3k) = (m, 18, k)
        fourier = torch.bmm(self.synthesis_mixing, legendre.view(nm, 18, nk))  # (m, (re/im, field), k)
        return torch.mm(self.inverse_dft, fourier.view(2 * nm, 5 * nk)).view(self.nlon, 5, nk)

    def tendency(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adiabatic, inviscid tendency ``dX/dt`` (real layout) and the grid fields it used.

        The Bernoulli term splits into ``-lap Phi`` (applied in spectral space,
        exact since Phi is band-limited) and ``-lap |u|^2 / 2`` (analysed from
        the grid products ``u u`` and ``v v``).

        Returns
        -------
        tendency
            ``(mmax, 6, lmax)``, the parent's ``dudtspec`` in real layout.
        grid
            ``(nlon, 5, nlat)`` fields of ``state`` in the order :data:`GRID_FIELDS`.
        """
        nm, _, nl = self.spectral_shape
        nk = self.nlat
        grid = self.synthesize(state)
        carriers = torch.index_select(grid, 1, self.carrier_index).add_(self.carrier_offset)
        products = carriers.view(-1, 3, 2, nk) * grid[:, 3:5].unsqueeze(1)  # q u, q v, Phi u, Phi v, u u, v v
        fourier = torch.mm(self.forward_dft, products.view(self.nlon, 6 * nk))  # (2m, 6k)
        legendre = torch.bmm(fourier.view(nm, 12, nk), self.analysis_legendre)  # (m, 12, 3l) = (m, 36, l)
        tendency = torch.bmm(self.analysis_mixing, legendre.view(nm, 36, nl))  # (m, 6, l)
        tendency[:, 4:6].addcmul_(state[:, 0:2], self.minus_laplacian)
        return tendency, grid


def _synthesis_mixing() -> torch.Tensor:
    """(10, 18) map from Legendre sums (column, block) to Fourier coefficients (re/im, field).

    Blocks: plain Legendre sums P, D0 ~ c_l dP/dtheta and D1 ~ c_l m P/sin(theta)
    with c_l = -a / (l (l + 1)). Following torch-harmonics' inverse vector
    transform of (zeta, delta) the winds per mode are ``u = D0 zeta + i D1 delta``
    and ``v = i D1 zeta - D0 delta``, i.e. in real and imaginary parts as set below.
    """
    mix = torch.zeros(2, 5, 6, 3, dtype=torch.float64)  # (re/im, field) x (column, block)
    for field in range(3):  # Phi, zeta, delta: plain Legendre sums
        for part in (_RE, _IM):
            mix[part, field, 2 * field + part, _SCALAR] = 1.0
    zeta_r, zeta_i, delta_r, delta_i = 2, 3, 4, 5
    u, v = 3, 4
    mix[_RE, u, zeta_r, _D_THETA], mix[_RE, u, delta_i, _D_LAMBDA] = 1.0, -1.0
    mix[_IM, u, zeta_i, _D_THETA], mix[_IM, u, delta_r, _D_LAMBDA] = 1.0, 1.0
    mix[_RE, v, zeta_i, _D_LAMBDA], mix[_RE, v, delta_r, _D_THETA] = -1.0, -1.0
    mix[_IM, v, zeta_r, _D_LAMBDA], mix[_IM, v, delta_i, _D_THETA] = 1.0, -1.0
    return mix.reshape(10, 18)


def _analysis_mixing() -> torch.Tensor:
    """(6, 36) map from Legendre sums ((re/im, product), block) to the tendency columns.

    The products are ``(q u, q v, Phi u, Phi v, u u, v v)`` with q the
    absolute vorticity. With torch-harmonics' vector weights W0, W1 (here
    already scaled by ``lap * a``) a vector field (x, y) has, per mode,
    ``curl = W0 x + i W1 y`` and ``div = i W1 x - W0 y``; so
    ``d zeta = -div(q u)``, ``d delta = curl(q u) - lap |u|^2/2`` and
    ``d Phi = -div(Phi u)``.
    """
    mix = torch.zeros(6, 2, 6, 3, dtype=torch.float64)  # tendency column x (re/im, product, block)
    qu, qv, pu, pv, uu, vv = range(6)
    phi_r, phi_i, zeta_r, zeta_i, delta_r, delta_i = range(6)
    for target, (x, y) in ((phi_r, (pu, pv)), (zeta_r, (qu, qv))):  # -div(x, y), real part
        mix[target, _IM, x, _W1], mix[target, _RE, y, _W0] = 1.0, 1.0
    for target, (x, y) in ((phi_i, (pu, pv)), (zeta_i, (qu, qv))):  # -div(x, y), imaginary part
        mix[target, _RE, x, _W1], mix[target, _IM, y, _W0] = -1.0, 1.0
    mix[delta_r, _RE, qu, _W0], mix[delta_r, _IM, qv, _W1] = 1.0, -1.0
    mix[delta_i, _IM, qu, _W0], mix[delta_i, _RE, qv, _W1] = 1.0, 1.0
    for part, target in ((_RE, delta_r), (_IM, delta_i)):  # -lap |u|^2 / 2
        mix[target, part, uu, _W_SCALAR] = mix[target, part, vv, _W_SCALAR] = 0.5
    return mix.reshape(6, 36)
