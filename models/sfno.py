r"""Spherical Fourier Neural Operator (Bonev et al. 2023) with time conditioning.

The network maps a state on an equiangular latitude/longitude grid (poles
included, latitude descending, longitude from 0) to the state one step later:

.. math::

    h_0 &= E\,[x;\ s;\ \phi;\ f(t)] \qquad
        \text{(1x1 encoder over state, static fields, position features, forcings)} \\
    h_{k+1} &= \tilde h_k + \mathrm{MLP}_k\big(\mathrm{FiLM}_k(N_k(\mathcal K_k h_k), c)\big) \\
    x_{t+1} &= x_t + \sigma \odot P_L D\,h_L \qquad \text{(residual prediction; } D \text{ a 1x1 decoder)}

:math:`P_L` projects onto the spherical harmonics of degree and order below
the blocks' truncation :math:`L` (``bandlimit_output``): the blocks see only
those degrees of their input, so finer output would pile up unseen over a
rollout (measured on the planet: grid-scale power grew 1000-fold in 60 days
without it). Wind component pairs (``wind_pairs``) are projected together,
as one vector field in physical units, onto the vector harmonics of the same
truncation (:class:`models.spectral.VectorBandLimit`): the scalar projection
of each component cannot represent a wind crossing a pole. The per-channel
increment scale :math:`\sigma` (buffer ``increment_scale``, default 1;
training sets it to each channel's typical one-step change) lets the decoder
work in units of order one whatever the size of the tendency.

The spherical convolution :math:`\mathcal K` is diagonal in spherical
harmonics: with the real SHT :math:`a^i_{lm} = \int f^i\,\overline{Y_{lm}}\,d\Omega`,

.. math::

    (\mathcal K h)^o = \mathrm{SHT}^{-1}\Big[\textstyle\sum_i W^{io}_l\, a^i_{lm}\Big],

one learned complex weight per input channel, output channel and degree
:math:`l` (the Driscoll-Healy convolution theorem: a zonal kernel acts on
every order :math:`m` of a degree alike, which keeps the operator
rotation-equivariant). The first block goes from the data grid to an internal
Gauss-Legendre grid ``scale_factor`` times coarser, the last block back;
their skip :math:`\tilde h_k` is the input spectrally resampled
(:math:`\mathrm{SHT}^{-1}_{out}\,\mathrm{SHT}_{in}\,h_k`), otherwise
:math:`\tilde h_k = h_k`. The transforms always run in float32 with autocast
disabled (cuFFT half precision needs power-of-two longitudes); the 1x1
layers follow the caller's autocast (bf16 on CUDA in training).

Conditioning (for Spherical DYffusion's time input): a scalar per sample
:math:`\tau` is embedded sinusoidally,
:math:`e_k(\tau) = \sin(\tau\,\omega_k),\ e_{k+D/2}(\tau) = \cos(\tau\,\omega_k)`,
:math:`\omega_k = 10000^{-k/(D/2)}`, passed through an MLP, and each block
applies :math:`\mathrm{FiLM}(h, c) = h \odot (1 + \gamma_k(c)) + \beta_k(c)`
per channel; :math:`\gamma_k, \beta_k` start at zero so an untrained
conditioned model equals the unconditioned one.

Dropout sits inside each block's MLP; :meth:`SFNO.set_mc_dropout` keeps it
active in eval mode (Monte Carlo dropout, the interpolator's only noise in
DYffusion). Inside :func:`dropout_generators` an eval-mode model draws each
batch row's mask from that row's own generator instead, so a stochastic
ensemble member gets the same noise whatever batch it is computed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from torch_harmonics import InverseRealSHT, RealSHT

from models.forcings import check_forcings, forcing_fields, n_forcing_channels, posix_seconds
from models.grid import latitudes, longitudes
from models.spectral import BandLimit, SpectralAnalysis, SpectralSynthesis, VectorBandLimit

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


_ROW_GENERATORS: ContextVar[tuple[torch.Generator, ...] | None] = ContextVar("mc_dropout_row_generators", default=None)


@contextmanager
def dropout_generators(generators: Sequence[torch.Generator] | None) -> Iterator[None]:
    """Within the block, eval-mode :class:`MCDropout` layers draw row ``b``'s mask from ``generators[b]``.

    The setting is per thread and per context (a :class:`contextvars.ContextVar`),
    so threads sharing one model each use their own generators. ``None`` leaves
    the usual behaviour. Training mode ignores it.
    """
    token = _ROW_GENERATORS.set(None if generators is None else tuple(generators))
    try:
        yield
    finally:
        _ROW_GENERATORS.reset(token)


class MCDropout(nn.Module):
    r"""Element-wise dropout that can stay active in eval mode.

    Kept values are scaled by :math:`1 / (1 - p)`, so the expectation is the
    identity. In training mode (or with :attr:`always_on`) masks come from
    torch's global generator; in eval mode inside :func:`dropout_generators`
    row ``b`` gets the mask :math:`m_b \sim \mathrm{Bernoulli}(1 - p)` drawn
    from its own generator; otherwise eval mode is the identity.

    Parameters
    ----------
    p
        Drop probability.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.always_on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        generators = None if self.training else _ROW_GENERATORS.get()
        if generators is None:
            return F.dropout(x, self.p, training=self.training or self.always_on)
        if len(generators) != x.shape[0]:
            raise ValueError(f"dropout_generators: {len(generators)} generators for a batch of {x.shape[0]}")
        keep = torch.stack([torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p, generator=g)
                            for g in generators])
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, always_on={self.always_on}"


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` holds an :class:`MCDropout` with ``p > 0`` (a stochastic sampler)."""
    return any(isinstance(m, MCDropout) and m.p > 0 for m in model.modules())


class SinusoidalEmbedding(nn.Module):
    r"""Sinusoidal embedding of a scalar per sample, :math:`(B,) \to (B, D)`.

    :math:`e_k(\tau) = \sin(\tau\omega_k)`, :math:`e_{k+D/2}(\tau) = \cos(\tau\omega_k)`,
    :math:`\omega_k = 10000^{-k/(D/2)}` for :math:`k < D/2`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dimension must be even, got {dim}")
        half = dim // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / half), persistent=False)

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        angles = tau.float()[:, None] * self.frequencies[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class SphericalConvolution(nn.Module):
    r"""Per-degree complex linear map in spherical-harmonic space.

    ``y^o = ISHT[ sum_i W^{io}_l a^i_{lm} ]`` with ``a = SHT(x)``. Returns the
    filtered field and the skip: ``x`` itself, or ``ISHT(SHT(x))`` when the
    two transforms live on different grids (spectral resampling). Both run in
    float32 with autocast disabled, whatever the input dtype.

    The transforms work on real (order, real/imaginary part) pairs
    (:mod:`models.spectral`), so the complex product is applied as its real
    2x2 form, :math:`\mathrm{Re}\,y = W_r \mathrm{Re}\,a - W_i \mathrm{Im}\,a`,
    :math:`\mathrm{Im}\,y = W_i \mathrm{Re}\,a + W_r \mathrm{Im}\,a`; with
    resampling, the filtered and the skip coefficients go through one inverse
    transform together.

    Parameters
    ----------
    analysis, synthesis
        Forward transform on the input grid and inverse transform on the
        output grid (:class:`models.spectral.SpectralAnalysis` and
        :class:`~models.spectral.SpectralSynthesis`), with the same
        ``lmax``/``mmax`` (shared between blocks).
    in_channels, out_channels
        Channel counts.
    constant_removed
        The output's mean is removed downstream (instance norm): degree 0
        carries no signal and its weight is held at zero.
    """

    def __init__(self, analysis: SpectralAnalysis, synthesis: SpectralSynthesis, in_channels: int, out_channels: int,
                 constant_removed: bool = False) -> None:
        super().__init__()
        if (analysis.lmax, analysis.mmax) != (synthesis.lmax, synthesis.mmax):
            raise ValueError("the forward and inverse transforms need the same lmax and mmax")
        self.analysis = analysis
        self.synthesis = synthesis
        self.resamples = (analysis.nlat, analysis.nlon) != (synthesis.nlat, synthesis.nlon)
        # real/imaginary pairs (real parameters keep DDP, optimisers and checkpoints simple);
        # variance 1/in_channels for the complex weight, split between its two parts
        scale = math.sqrt(0.5 / in_channels)
        self.weight = nn.Parameter(scale * torch.randn(in_channels, out_channels, synthesis.lmax, 2))
        # Degree 0 has only the order m = 0, whose imaginary part the real inverse transform
        # drops, so Im W_0 is kept at zero; with ``constant_removed`` (a following instance
        # norm subtracts the mean) the constant field W_0 a_00 Y_00 vanishes too and W_0 is
        # zeroed whole. Dead parameters would otherwise live on rounding noise, which Adam
        # scales up to full-size steps.
        mask = torch.ones(1, 1, synthesis.lmax, 2)
        mask[:, :, 0, 1] = 0.0
        if constant_removed:
            mask[:, :, 0, 0] = 0.0
        self.register_buffer("live_weights", mask, persistent=False)

    def real_weight(self) -> torch.Tensor:
        """The complex weight as real 2x2 blocks, shape ``(in, 2, out, 2, lmax)``: ``[i, part in, o, part out, l]``."""
        w = self.weight * self.live_weights
        real, imag = w[..., 0], w[..., 1]
        return torch.stack([torch.stack([real, imag], dim=2), torch.stack([-imag, real], dim=2)], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            coefficients = self.analysis(x.float())  # (m, 2, B, in, l)
            mixed = torch.einsum("mcbil,icodl->mdbol", coefficients, self.real_weight())
            if not self.resamples:
                return self.synthesis(mixed), x
            both = self.synthesis(torch.cat([mixed, coefficients], dim=2))
            batch = x.shape[0]
        return both[:batch], both[batch:]


class SFNOBlock(nn.Module):
    r"""One SFNO block: ``skip + MLP(FiLM(norm(K x), c))``.

    Parameters
    ----------
    analysis, synthesis
        Transforms of :class:`SphericalConvolution`.
    dim
        Channels (embedding width).
    mlp_ratio
        Hidden width of the MLP as a multiple of ``dim``.
    drop_rate
        Dropout probability of the MLP's hidden layer (Monte Carlo capable).
    activation
        Activation class.
    normalization
        ``"instance"`` (per-channel over the grid, affine) or ``"none"``.
    cond_dim
        Width of the conditioning vector, or None for an unconditioned block.
    """

    def __init__(
        self,
        analysis: SpectralAnalysis,
        synthesis: SpectralSynthesis,
        dim: int,
        mlp_ratio: float,
        drop_rate: float,
        activation: type[nn.Module],
        normalization: str,
        cond_dim: int | None,
    ) -> None:
        super().__init__()
        self.filter = SphericalConvolution(analysis, synthesis, dim, dim, constant_removed=normalization == "instance")
        self.norm = nn.InstanceNorm2d(dim, affine=True) if normalization == "instance" else nn.Identity()
        self.film = nn.Linear(cond_dim, 2 * dim) if cond_dim is not None else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            activation(),
            MCDropout(drop_rate),
            nn.Conv2d(hidden, dim, 1, bias=False),
        )
        nn.init.normal_(self.mlp[3].weight, std=math.sqrt(0.5 / hidden))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        y, skip = self.filter(x)
        y = self.norm(y)
        if self.film is not None:
            scale, shift = self.film(cond).chunk(2, dim=-1)
            y = y * (1.0 + scale[:, :, None, None]) + shift[:, :, None, None]
        return skip + self.mlp(y)


def _check_wind_pairs(pairs: Sequence[Sequence[int]], out_channels: int, bandlimit_output: bool) -> tuple[tuple[int, int], ...]:
    """``pairs`` as int tuples; ValueError unless each is two distinct output channels, none used twice."""
    used = [int(k) for pair in pairs for k in pair]
    if any(len(pair) != 2 for pair in pairs) or any(not 0 <= k < out_channels for k in used) or len(set(used)) != len(used):
        raise ValueError(f"wind_pairs must be (u, v) pairs of distinct output channels below {out_channels}, got {list(pairs)}")
    if pairs and not bandlimit_output:
        raise ValueError("wind_pairs band-limit the wind increments: they need bandlimit_output=True")
    return tuple((used[2 * k], used[2 * k + 1]) for k in range(len(used) // 2))


def _position_features(nlat: int, nlon: int) -> torch.Tensor:
    """sin/cos of latitude and longitude on the equiangular grid, shape (4, nlat, nlon)."""
    lat2, lon2 = torch.meshgrid(latitudes(nlat), longitudes(nlon), indexing="ij")
    return torch.stack([torch.sin(lat2), torch.cos(lat2), torch.sin(lon2), torch.cos(lon2)]).float()


class SFNO(nn.Module):
    r"""Spherical Fourier Neural Operator with static inputs and optional time conditioning.

    Parameters
    ----------
    nlat, nlon
        Data grid: equiangular with poles, latitude 90 -> -90, longitude from 0.
    in_channels
        Dynamic input channels (the state; DYffusion's interpolator stacks two states).
    out_channels
        Predicted channels (default ``in_channels``). With ``residual`` the
        output is ``x[:, :out_channels] + increment_scale * delta``.
    n_static
        Static fields (orography, land-sea mask...) held in the buffer
        ``static_fields`` (saved with the weights; set with
        :meth:`set_static_fields`) and appended to every input.
    lat_lon_features
        Append sin/cos of latitude and longitude as four input channels.
    forcings
        Known forcings of the input's valid time appended as input channels
        (names of :data:`models.forcings.FORCING_CHANNELS`: ``year_progress``,
        ``day_progress``, ``toa_insolation``, ``daily_insolation``); a model
        with forcings needs ``time`` in every call.
    embed_dim, num_layers, mlp_ratio
        Width, number of blocks, MLP expansion.
    scale_factor
        The blocks run on an internal grid of ``(nlat - 1) // scale_factor + 1``
        by ``nlon // scale_factor`` points.
    drop_rate
        Dropout in every block's MLP (see :meth:`set_mc_dropout`).
    residual
        Predict the increment of the state (needs ``in_channels >= out_channels``).
    normalization
        ``"instance"`` or ``"none"`` after each spherical convolution.
    activation
        ``"gelu"``, ``"relu"`` or ``"silu"``.
    hard_thresholding_fraction
        Fraction of the spectral modes kept in the blocks.
    grid_internal
        Quadrature grid of the internal transforms (``"legendre-gauss"`` or ``"equiangular"``).
    conditioning
        Take a per-sample scalar ``cond`` (e.g. DYffusion's interpolation time).
    cond_embed_dim
        Width of the conditioning embedding.
    bandlimit_output
        Project the decoded output (the increment, with ``residual``) onto the
        spherical harmonics the blocks resolve (degree and order below their
        truncation). The blocks see only those degrees of their input, so
        finer-scale output they cannot see again would accumulate unchecked
        over an autoregressive rollout.
    wind_pairs
        Output channel indices ``(u, v)`` of eastward and northward wind
        components (:func:`pipeline.data.channels.wind_pairs`) whose
        increments are band-limited as one vector field
        (:class:`models.spectral.VectorBandLimit`) in physical units: the
        decoded pair times ``increment_scale * output_std`` (buffer
        ``output_std``, each output channel's normalisation std, set with
        :meth:`set_output_std`; it exists only in a model with wind pairs).
        Needs ``bandlimit_output``.
    """

    def __init__(
        self,
        nlat: int,
        nlon: int,
        in_channels: int,
        out_channels: int | None = None,
        n_static: int = 0,
        lat_lon_features: bool = True,
        embed_dim: int = 64,
        num_layers: int = 4,
        scale_factor: int = 2,
        mlp_ratio: float = 2.0,
        drop_rate: float = 0.0,
        residual: bool = True,
        normalization: str = "instance",
        activation: str = "gelu",
        hard_thresholding_fraction: float = 1.0,
        grid_internal: str = "legendre-gauss",
        conditioning: bool = False,
        cond_embed_dim: int = 64,
        bandlimit_output: bool = True,
        forcings: Sequence[str] = (),
        wind_pairs: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if residual and in_channels < out_channels:
            raise ValueError(f"residual prediction needs in_channels >= out_channels, got {in_channels} < {out_channels}")
        if normalization not in ("instance", "none"):
            raise ValueError(f"normalization must be 'instance' or 'none', got {normalization!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.nlat, self.nlon = nlat, nlon
        self.in_channels, self.out_channels = in_channels, out_channels
        self.n_static = n_static
        self.residual = residual
        self.conditioning = conditioning
        self.bandlimit_output = bandlimit_output
        self.forcings = check_forcings(forcings)
        self.wind_pairs = _check_wind_pairs(wind_pairs, out_channels, bandlimit_output)
        act = _ACTIVATIONS[activation]

        self.register_buffer("static_fields", torch.zeros(n_static, nlat, nlon))
        self.register_buffer("increment_scale", torch.ones(out_channels))
        if self.wind_pairs:
            self.register_buffer("output_std", torch.ones(out_channels))
        self.register_buffer(
            "position_features",
            _position_features(nlat, nlon) if lat_lon_features else torch.zeros(0, nlat, nlon),
            persistent=False,
        )
        n_inputs = in_channels + n_static + self.position_features.shape[0] + n_forcing_channels(self.forcings)
        self.encoder = nn.Conv2d(n_inputs, embed_dim, 1)

        inner_nlat = (nlat - 1) // scale_factor + 1
        inner_nlon = nlon // scale_factor
        modes = int(min(inner_nlat, inner_nlon // 2) * hard_thresholding_fraction)
        if modes < 1:
            raise ValueError(f"no spectral modes left on a {inner_nlat}x{inner_nlon} internal grid")
        # float32 transform matrices (torch-harmonics builds them in float64)
        self.sht_data = RealSHT(nlat, nlon, lmax=modes, mmax=modes, grid="equiangular").float()
        self.isht_data = InverseRealSHT(nlat, nlon, lmax=modes, mmax=modes, grid="equiangular").float()
        self.sht_inner = RealSHT(inner_nlat, inner_nlon, lmax=modes, mmax=modes, grid=grid_internal).float()
        self.isht_inner = InverseRealSHT(inner_nlat, inner_nlon, lmax=modes, mmax=modes, grid=grid_internal).float()
        # the same transforms in the real pair layout the blocks use (models.spectral)
        analysis_data, analysis_inner = SpectralAnalysis(self.sht_data), SpectralAnalysis(self.sht_inner)
        synthesis_data, synthesis_inner = SpectralSynthesis(self.isht_data), SpectralSynthesis(self.isht_inner)
        self.band_limit = BandLimit(self.sht_data, self.isht_data)
        self.wind_band_limit = VectorBandLimit(nlat, nlon, modes, modes) if self.wind_pairs else None

        if conditioning:
            self.cond_embedding = nn.Sequential(
                SinusoidalEmbedding(cond_embed_dim),
                nn.Linear(cond_embed_dim, cond_embed_dim),
                nn.SiLU(),
                nn.Linear(cond_embed_dim, cond_embed_dim),
                nn.SiLU(),
            )
        else:
            self.cond_embedding = None
        self.blocks = nn.ModuleList(
            SFNOBlock(
                analysis_data if k == 0 else analysis_inner,
                synthesis_data if k == num_layers - 1 else synthesis_inner,
                embed_dim,
                mlp_ratio,
                drop_rate,
                act,
                normalization,
                cond_embed_dim if conditioning else None,
            )
            for k in range(num_layers)
        )
        self.decoder = nn.Conv2d(embed_dim, out_channels, 1, bias=False)
        nn.init.normal_(self.decoder.weight, std=math.sqrt(1.0 / embed_dim))

    def set_static_fields(self, fields: torch.Tensor) -> None:
        """Set the (already normalised) static input fields, shape (n_static, nlat, nlon)."""
        if tuple(fields.shape) != tuple(self.static_fields.shape):
            raise ValueError(f"static fields must have shape {tuple(self.static_fields.shape)}, got {tuple(fields.shape)}")
        with torch.no_grad():
            self.static_fields.copy_(fields)

    def set_increment_scale(self, scale: torch.Tensor) -> None:
        """Set the per-channel scale of the predicted increment, shape (out_channels,)."""
        if tuple(scale.shape) != tuple(self.increment_scale.shape):
            raise ValueError(f"increment scale must have shape {tuple(self.increment_scale.shape)}, got {tuple(scale.shape)}")
        with torch.no_grad():
            self.increment_scale.copy_(scale)

    def set_output_std(self, std: torch.Tensor) -> None:
        """Set each output channel's normalisation std (physical units per normalised unit), shape (out_channels,).

        Only a model with ``wind_pairs`` has (and needs) it: the vector band
        limit works on the wind increments in physical units.
        """
        if not self.wind_pairs:
            raise ValueError("output_std is used only by a model with wind_pairs")
        if tuple(std.shape) != tuple(self.output_std.shape):
            raise ValueError(f"output std must have shape {tuple(self.output_std.shape)}, got {tuple(std.shape)}")
        with torch.no_grad():
            self.output_std.copy_(std)

    def set_mc_dropout(self, enabled: bool = True) -> None:
        """Keep dropout active in eval mode (Monte Carlo dropout) or return to the usual behaviour."""
        for module in self.modules():
            if isinstance(module, MCDropout):
                module.always_on = enabled

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, time: object = None) -> torch.Tensor:
        """Predict the next state.

        Parameters
        ----------
        x
            State, shape ``(B, in_channels, nlat, nlon)`` (normalised units).
        cond
            Per-sample scalar, shape ``(B,)``; required iff the model is conditioned.
        time
            Valid time of ``x`` (one, or one per row; see
            :func:`models.forcings.posix_seconds`); required iff the model
            has forcings, ignored otherwise.

        Returns
        -------
        torch.Tensor
            Shape ``(B, out_channels, nlat, nlon)``, in ``x``'s dtype class
            (float32 for float32 input, also under autocast).
        """
        if self.conditioning != (cond is not None):
            raise ValueError("cond is required by a conditioned SFNO and refused by an unconditioned one")
        batch = x.shape[0]
        fixed = torch.cat([self.static_fields, self.position_features]).to(x.dtype)
        inputs = [x, fixed.expand(batch, -1, -1, -1)]
        if self.forcings:
            if time is None:
                raise ValueError(f"this model takes the forcings {list(self.forcings)}: pass the valid time of its input")
            seconds = posix_seconds(time, batch).to(x.device)
            inputs.append(forcing_fields(self.forcings, seconds, self.nlat, self.nlon).to(x.dtype))
        h = self.encoder(torch.cat(inputs, dim=1))
        c = self.cond_embedding(cond) if self.cond_embedding is not None else None
        for block in self.blocks:
            h = block(h, c)
        delta = self.decoder(h)
        if self.bandlimit_output:
            with torch.autocast(device_type=delta.device.type, enabled=False):
                delta = self._band_limited(delta.float())
        if self.residual:
            return x[:, : self.out_channels] + delta * self.increment_scale[:, None, None]
        return delta.to(x.dtype)

    def _band_limited(self, delta: torch.Tensor) -> torch.Tensor:
        """:math:`P_L` of every decoded channel, then the wind pairs' vector projection of their decoded values."""
        limited = self.band_limit(delta)
        if not self.wind_pairs:
            return limited
        unit = self.increment_scale * self.output_std  # physical size of one decoded unit
        channels = list(limited.unbind(dim=1))
        for i, j in self.wind_pairs:
            u, v = self.wind_band_limit(delta[:, i] * unit[i], delta[:, j] * unit[j])
            channels[i], channels[j] = u / unit[i], v / unit[j]
        return torch.stack(channels, dim=1)
