r"""Hemispheric-centred bred vectors (HENS, Mahesh et al. 2024; DESIGN.md section 1).

Notation: :math:`x_a(t)` analyses, :math:`M` the model's one-step map
(``step``, physical units, batched), :math:`\Delta t` its step,
:math:`a_c = \alpha\,\mathrm{RMSE}_{48h,c}` the per-channel target amplitude
(:func:`bred_vector_target`, :math:`\alpha = 0.35`).

1. **Seed** (per pair :math:`p`, from its own seed): a unit-variance
   correlated spherical field :math:`\xi_p` (:class:`SphericalSeedField`) on
   each seed channel (default ``z500``), zero on the others, rescaled to the
   target: :math:`\delta x^{(0)} = \mathcal R(\xi_p)`.
2. **Breed** for :math:`k = 0 \dots K-1` through the analyses
   :math:`x_k = x_a(t_0 - (K - k)\Delta t)`:

   .. math::

       \delta x^{(k+1)} = \mathcal R\big(M(x_k + \delta x^{(k)}) - M(x_k)\big),

   so that each bred vector is valid at the next analysis time and the last
   one, :math:`\delta x = \delta x^{(K)}`, at :math:`t_0`. With
   :math:`K = 3` and 6-hourly steps the perturbed states pass through the
   analyses at :math:`t_0 - 12\,h,\ t_0 - 6\,h,\ t_0` (breeding starts from
   the analysis at :math:`t_0 - 18\,h`; :func:`breeding_times`). The control
   and all perturbed states of a call go through ``step`` as one batch.
3. **Hemispheric rescale** :math:`\mathcal R`: per channel :math:`c` and
   extratropical band :math:`H \in \{N: \varphi \ge \varphi_b,\ S: \varphi
   \le -\varphi_b\}` (:math:`\varphi_b = 20^\circ`, pole included),

   .. math::

       r_{H,c} = \sqrt{\frac{\sum_{j \in H} w_j \frac1{n_{lon}}\sum_i
           \delta x_{c,ji}^2}{\sum_{j \in H} w_j}}, \qquad
       f_{H,c} = a_c / r_{H,c}\ (0 \text{ if } r_{H,c} = 0),

   with :math:`w_j` the cell-area weights of :func:`pipeline.grid.latitude_weights`;
   in the tropics the factor is linear in latitude,
   :math:`f_c(\varphi) = f_{S,c} + (f_{N,c} - f_{S,c})\,(\varphi + \varphi_b)/(2\varphi_b)`;
   :math:`\mathcal R(\delta x)_{c,ji} = f_c(\varphi_j)\,\delta x_{c,ji}`.
   After it, the area-weighted RMS of each channel over each extratropical
   band equals :math:`a_c`.
4. **Centred pairs** (:func:`centred_members`; :func:`perturbed_states` for
   any subset of members): :math:`x_0 + \delta x_p` and
   :math:`x_0 - \delta x_p`, then non-negative channels (humidity-like,
   :func:`pipeline.data.channels.is_non_negative`) of the perturbed members
   clipped at zero.

Centring (:func:`centred_pair`): the members of a pair are
:math:`p = \mathrm{fl}(x_0 + \delta x)` and :math:`m = 2x_0 - p` when that is
a float32 number, else :math:`m = \mathrm{fl}(x_0 - \delta x)` and
:math:`p = 2x_0 - m` when that is one, so that :math:`p + m = 2x_0` exactly
and the pair mean equals the control bit for bit (also when computed in
float32: ``(p + m) / 2 == x0``). Each member is within half a float32 ulp of
the larger member of :math:`x_0 \pm \delta x`. Where neither is a float32
number, both members' float32 spacings are coarser than the finest power of
two dividing :math:`2x_0` (possible only where :math:`|\delta x| \gtrsim |x_0|`),
so no pair of float32 numbers sums to :math:`2x_0`; there both are
correctly rounded (:math:`x_0 \pm \delta x` to half an ulp each) and the
pair mean is :math:`x_0` to half an ulp of the members. Clipping breaks the
centring where, and only where, it changes a value.

Everything runs in float32 under :func:`torch.no_grad`; for given seeds the
result does not depend on which other pairs are bred in the same call as
long as ``step`` treats batch entries independently (it is called on the
same batch layout: the control first, then the pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

import numpy as np
import torch

from pipeline.data.channels import is_non_negative
from pipeline.ensemble.config import DEFAULT_ALPHA, DEFAULT_EXTRATROPICS_DEG
from pipeline.ensemble.seed_field import SphericalSeedField
from pipeline.ensemble.seeds import InitTime, canonical_init_time
from pipeline.errors import MyriadError
from pipeline.grid import Grid

logger = logging.getLogger(__name__)

Step = Callable[..., torch.Tensor]
"""The model's one-step map on physical states, ``(B, C, H, W) -> (B, C, H, W)``; called
``step(states)``, or ``step(states, time)`` with the cycle's valid time when :func:`breed` has times."""

def breeding_times(init_time: InitTime, cycles: int, step: timedelta) -> list[np.datetime64]:
    """Start times of the breeding cycles, ``t0 - K dt, ..., t0 - dt`` (the analyses :func:`breed` takes)."""
    t0 = canonical_init_time(init_time)
    dt = np.timedelta64(int(step.total_seconds()), "s")
    return [t0 - (cycles - k) * dt for k in range(cycles)]


def bred_vector_target(
    rmse_48h: Mapping[str, float],
    channels: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
    where: str = "calibration",
) -> torch.Tensor:
    """Per-channel target amplitude ``alpha * RMSE_48h`` (float32, physical units).

    Raises
    ------
    MyriadError
        A channel is missing from ``rmse_48h``, or its RMSE is negative or not finite.
    """
    values = []
    for name in channels:
        if name not in rmse_48h:
            raise MyriadError(f"{where}: no 48 h RMSE for channel '{name}' (has {sorted(rmse_48h)})")
        value = float(rmse_48h[name])
        if not np.isfinite(value) or value < 0:
            raise MyriadError(f"{where}: 48 h RMSE of channel '{name}' is {value} (must be finite and >= 0)")
        values.append(alpha * value)
    return torch.tensor(values, dtype=torch.float32)


def channel_mask(channels: Sequence[str], selected: Sequence[str], what: str = "seed channel") -> torch.Tensor:
    """Boolean mask over ``channels`` of the names in ``selected`` (each must be a channel)."""
    for name in selected:
        if name not in channels:
            raise MyriadError(f"{what} '{name}' is not one of the model's channels {list(channels)}")
    return torch.tensor([name in selected for name in channels], dtype=torch.bool)


def non_negative_mask(channels: Sequence[str]) -> torch.Tensor:
    """Boolean mask of the channels clipped at zero (humidity/precipitation-like)."""
    return torch.tensor([is_non_negative(name) for name in channels], dtype=torch.bool)


def _band_rows(grid: Grid, boundary_deg: float) -> tuple[np.ndarray, np.ndarray]:
    lat = grid.latitudes
    north, south = lat >= boundary_deg, lat <= -boundary_deg
    if not north.any() or not south.any():
        raise ValueError(f"grid {grid.name} has no rows poleward of +-{boundary_deg} deg")
    return north, south


def extratropical_rms(
    dx: torch.Tensor, grid: Grid, boundary_deg: float = DEFAULT_EXTRATROPICS_DEG
) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-weighted RMS over the northern and southern extratropics, each ``dx.shape[:-2]``.

    Computed in float64: ``sqrt(sum_j w_j mean_i dx_ji^2 / sum_j w_j)`` over the
    rows with latitude ``>= boundary_deg`` (north) and ``<= -boundary_deg`` (south).
    """
    north, south = _band_rows(grid, boundary_deg)
    weights = torch.as_tensor(grid.area_weights(), dtype=torch.float64, device=dx.device)
    row_power = torch.mean(dx.square(), dim=-1, dtype=torch.float64)
    rms = []
    for band in (north, south):
        rows = torch.as_tensor(band, device=dx.device)
        w = weights[rows]
        rms.append(torch.sqrt((row_power[..., rows] * w).sum(-1) / w.sum()))
    return rms[0], rms[1]


def hemispheric_rescale_factor(
    dx: torch.Tensor,
    target_rms: torch.Tensor,
    grid: Grid,
    boundary_deg: float = DEFAULT_EXTRATROPICS_DEG,
) -> torch.Tensor:
    """Factor ``f_c(lat)`` of the hemispheric rescale, shape ``(*dx.shape[:-2], nlat)``, float64.

    ``a_c / r_N`` poleward of ``+boundary_deg``, ``a_c / r_S`` poleward of
    ``-boundary_deg``, linear in latitude between; zero where the band's RMS is zero.
    """
    rms_north, rms_south = extratropical_rms(dx, grid, boundary_deg)
    target = target_rms.to(device=dx.device, dtype=torch.float64)
    factor_north = torch.where(rms_north > 0, target / rms_north, 0.0)
    factor_south = torch.where(rms_south > 0, target / rms_south, 0.0)
    lat = torch.as_tensor(grid.latitudes, dtype=torch.float64, device=dx.device)
    fraction = ((lat + boundary_deg) / (2 * boundary_deg)).clamp(0.0, 1.0)
    return factor_south[..., None] + (factor_north - factor_south)[..., None] * fraction


def rescale_hemispheric(
    dx: torch.Tensor,
    target_rms: torch.Tensor,
    grid: Grid,
    boundary_deg: float = DEFAULT_EXTRATROPICS_DEG,
) -> torch.Tensor:
    """``dx`` (``(..., C, H, W)``) times :func:`hemispheric_rescale_factor`, in ``dx``'s dtype."""
    factor = hemispheric_rescale_factor(dx, target_rms, grid, boundary_deg)
    return dx * factor[..., None].to(dx.dtype)


def seed_perturbations(
    seed_field: SphericalSeedField,
    seeds: Sequence[int],
    seed_channels: torch.Tensor,
    target_rms: torch.Tensor,
    boundary_deg: float = DEFAULT_EXTRATROPICS_DEG,
) -> torch.Tensor:
    """The starting perturbation of each pair, ``(P, C, H, W)`` float32.

    Pair ``p`` draws one field per seed channel (in channel order) from a CPU
    generator seeded with ``seeds[p]``; other channels are zero; then the
    hemispheric rescale to ``target_rms``.
    """
    grid = seed_field.grid
    n_channels = len(seed_channels)
    n_seeded = int(seed_channels.sum())
    device = seed_field.real_std.device
    out = torch.zeros((len(seeds), n_channels, grid.nlat, grid.nlon), dtype=torch.float32, device=device)
    for p, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        out[p, seed_channels.to(device)] = seed_field.sample(generator, (n_seeded,))
    return rescale_hemispheric(out, target_rms, grid, boundary_deg)


def breed(
    step: Step,
    analyses: torch.Tensor,
    target_rms: torch.Tensor,
    seed_channels: torch.Tensor,
    seeds: Sequence[int],
    seed_field: SphericalSeedField,
    boundary_deg: float = DEFAULT_EXTRATROPICS_DEG,
    times: Sequence[np.datetime64] | None = None,
) -> torch.Tensor:
    """Bred vectors of ``len(seeds)`` pairs, ``(P, C, H, W)`` float32, valid at ``t0``.

    Parameters
    ----------
    step
        One model step on physical states, batched over the first dimension.
    analyses
        ``(K, C, H, W)``: the analyses at ``t0 - K dt, ..., t0 - dt`` (the
        start of each breeding cycle); ``K`` is the number of cycles.
    target_rms
        ``(C,)`` per-channel amplitude (:func:`bred_vector_target`).
    seed_channels
        ``(C,)`` boolean mask of the channels that get seed noise.
    seeds
        One seed per pair (:func:`pipeline.ensemble.seeds.member_seed`); a
        subset of seeds gives the same vectors as in the full call.
    seed_field
        The seed field generator on the state's grid and device.
    boundary_deg
        Equatorward edge of the extratropical bands.
    times
        Valid times of ``analyses`` (:func:`breeding_times`), passed to
        ``step`` for a model with forcings; None calls ``step(states)``.

    Raises
    ------
    MyriadError
        ``step`` returned non-finite values while breeding.
    """
    grid = seed_field.grid
    if analyses.ndim != 4 or tuple(analyses.shape[2:]) != (grid.nlat, grid.nlon):
        raise ValueError(f"analyses must be (K, C, {grid.nlat}, {grid.nlon}), got {tuple(analyses.shape)}")
    n_cycles, n_channels = analyses.shape[0], analyses.shape[1]
    if target_rms.shape != (n_channels,) or seed_channels.shape != (n_channels,):
        raise ValueError(f"target_rms and seed_channels must have shape ({n_channels},)")
    analyses = analyses.to(device=seed_field.real_std.device, dtype=torch.float32)
    with torch.no_grad():
        dx = seed_perturbations(seed_field, seeds, seed_channels, target_rms, boundary_deg)
        for cycle in range(n_cycles):
            state = analyses[cycle : cycle + 1]
            pair = torch.cat([state, state + dx])
            forecast = step(pair) if times is None else step(pair, times[cycle])
            dx = forecast[1:] - forecast[:1]
            if not torch.isfinite(dx).all():
                raise MyriadError(
                    f"bred vectors: the model step produced non-finite values in breeding cycle {cycle + 1}/{n_cycles}"
                )
            dx = rescale_hemispheric(dx, target_rms, grid, boundary_deg)
    collapsed = (dx.flatten(1) == 0).all(dim=1)
    if collapsed.any():
        logger.warning(
            "bred vectors: %d of %d pairs collapsed to zero (the model ignores the perturbation)",
            int(collapsed.sum()),
            len(seeds),
        )
    return dx


def centred_pair(x0: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The members ``(plus, minus)`` near ``x0 + dx`` and ``x0 - dx`` with ``plus + minus == 2 x0`` where float32 allows it.

    Per element (float64 arithmetic, exact for float32 inputs):
    ``plus = fl(x0 + dx)`` and ``minus = 2 x0 - plus`` if that is a float32
    number; else ``minus = fl(x0 - dx)`` and ``plus = 2 x0 - minus`` if that
    is one; else both correctly rounded (see the module docstring: no
    centred float32 pair exists there). Elementwise, so a member's value
    does not depend on the other members computed with it.

    Parameters
    ----------
    x0
        Analysis, broadcastable to ``dx``.
    dx
        Perturbations.

    Returns
    -------
    tuple of torch.Tensor
        ``(plus, minus)`` in ``dx``'s dtype (non-float32 inputs: ``x0 + dx``, ``x0 - dx``).
    """
    if dx.dtype != torch.float32:
        return x0.to(dx.dtype) + dx, x0.to(dx.dtype) - dx
    a, d = x0.double(), dx.double()
    plus, minus = (a + d).float().double(), (a - d).float().double()
    minus_from_plus, plus_from_minus = 2 * a - plus, 2 * a - minus
    from_plus = minus_from_plus.float().double() == minus_from_plus
    from_minus = ~from_plus & (plus_from_minus.float().double() == plus_from_minus)
    plus = torch.where(from_minus, plus_from_minus, plus)
    minus = torch.where(from_plus, minus_from_plus, minus)
    return plus.float(), minus.float()


def perturbed_states(
    x0: torch.Tensor,
    dx: torch.Tensor,
    signs: torch.Tensor,
    non_negative: torch.Tensor,
) -> torch.Tensor:
    """Initial states ``x0 + sign_m dx_m`` of any members, shape ``(M, C, H, W)``.

    The general form of :func:`centred_members` for a member block that holds
    only some members of some pairs: member ``m`` gets its pair's bred vector
    ``dx[m]`` and ``signs[m]`` in {+1, -1, 0}: the ``plus`` or ``minus`` of
    :func:`centred_pair` (elementwise, so the same bits whichever members are
    computed together), or exactly ``x0``. The result equals the matching
    rows of :func:`centred_members`.

    Parameters
    ----------
    x0
        ``(C, H, W)`` analysis at the init time.
    dx
        ``(M, C, H, W)`` each member's bred vector (any finite values for controls).
    signs
        ``(M,)`` perturbation signs.
    non_negative
        ``(C,)`` mask of channels clipped at zero in perturbed members
        (the control stays exactly ``x0``).
    """
    sign = signs.to(device=dx.device).view(-1, 1, 1, 1)
    x0 = x0.to(device=dx.device, dtype=dx.dtype)
    plus, minus = centred_pair(x0, dx)
    states = torch.where(sign > 0, plus, torch.where(sign < 0, minus, x0.expand_as(dx)))
    clip = non_negative.to(dx.device)
    perturbed = (signs != 0).to(dx.device)
    if clip.any() and perturbed.any():
        rows = states[perturbed]
        rows[:, clip] = rows[:, clip].clamp(min=0.0)
        states[perturbed] = rows
    return states


def centred_members(
    x0: torch.Tensor,
    dx: torch.Tensor,
    include_control: bool,
    non_negative: torch.Tensor,
) -> torch.Tensor:
    """Initial states ``[x0], x0 + dx_0, x0 - dx_0, x0 + dx_1, ...``, shape ``(M, C, H, W)``.

    Parameters
    ----------
    x0
        ``(C, H, W)`` analysis at the init time.
    dx
        ``(P, C, H, W)`` bred vectors (:func:`breed`).
    include_control
        Put the unperturbed ``x0`` first (``M = 2P + 1``; else ``M = 2P``).
    non_negative
        ``(C,)`` mask of channels clipped at zero after the pairs are formed
        (perturbed members only: the control stays exactly ``x0``).
    """
    per_member = dx.repeat_interleave(2, dim=0)
    signs = torch.tensor([+1, -1] * dx.shape[0])
    if include_control:
        per_member = torch.cat([torch.zeros_like(dx[:1]), per_member])
        signs = torch.cat([torch.zeros(1, dtype=signs.dtype), signs])
    return perturbed_states(x0, per_member, signs, non_negative)
