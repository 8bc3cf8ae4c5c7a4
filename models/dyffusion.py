r"""Spherical DYffusion (Cachay et al. 2024): interpolator, forecaster and cold sampler.

Two networks on the time-conditioned SFNO (:class:`models.sfno.SFNO`) span a
*horizon* of :math:`h` time steps:

- the **interpolator** :math:`I(x_t, x_{t+h}, i) \approx x_{t+i}` takes both
  end states stacked on the channel axis (the SFNO adds the static fields and
  position features) and the time :math:`i`; its Monte Carlo dropout stays on
  at inference and is the model's only source of randomness;
- the **forecaster** :math:`F(x_s, i) \approx x_{t+h}` takes the state reached
  at time :math:`i` of the chain.

**Time normalisation.** Both networks take :math:`i` as the *fraction of the
horizon*, :math:`i_s = s / h \in [0, 1]` for the integer step :math:`s`
(shape ``(B,)``, or a Python number for the whole batch). The SFNO's
sinusoidal embedding (frequencies :math:`10^{-4} \ldots 1` rad per unit) gets
``time_scale * i`` (default 100), so the steps of any horizon are well apart
in the embedding.

**Cold sampling** (:class:`ColdSampler`) of one chain from :math:`x_0 = x_t`:

.. math::

    \hat x &= F(x_s, i_s) \\
    x_{s+1} &= x_s + I(x_t, \hat x, i_{s+1}) - I(x_t, \hat x, i_s),
    \qquad s = 0, \ldots, h-1,

with the boundary values fixed, not learned: :math:`I(x_t, \hat x, 0) = x_t`
and :math:`I(x_t, \hat x, 1) = \hat x` (the interpolator is trained only on
:math:`1 \le i \le h-1`). So the first step is :math:`x_1 = I(x_t, \hat x, i_1)`
and the last :math:`x_h = x_{h-1} + \hat x - I(x_t, \hat x, i_{h-1})`; with
:math:`h = 1` a chain is one forecaster call, :math:`x_1 = F(x_0, 0)`. Every
:math:`x_{s+1}` is emitted as a forecast; a long rollout starts the next chain
from :math:`x_h`. A chain costs :math:`h` forecaster and :math:`2(h-1)`
interpolator passes, :math:`(3h - 2) / h` network passes per emitted step
(:attr:`ColdSampler.passes_per_step`).

**Jump sampling** (``refine=False``) calls the forecaster once per chain,
:math:`\hat x = F(x_t, 0)`, and keeps it: the update above with :math:`\hat x`
fixed telescopes to :math:`x_s = I(x_t, \hat x, i_s)`, so :math:`x_h = \hat x`.
Successive chains then iterate the forecaster's jump :math:`F(\cdot, 0)` (the map
that pushforward training shows its own states) and the interpolator only
fills in the steps between: one network pass per emitted step. The chain
ends do not depend on the interpolator's dropout, so stochastic samples from
one start coincide every :math:`h` steps.

**Valid time.** Networks built with forcings (:mod:`models.forcings`) take
the chain's start time :math:`t` as ``time`` in every call of the chain (the
time step :math:`i` tells them how far into the chain they are); a rollout
advances it by :math:`h` steps from chain to chain.

For forecasts, :class:`DYffusion` holds both trained networks: its
``forward`` is one emitted step (the first of a chain) and :meth:`DYffusion.rollout`
chains the sampler. In eval mode its interpolator's dropout is off
(deterministic) unless the caller supplies per-row generators
(:func:`models.sfno.dropout_generators`), which makes every ensemble
member's sampling noise its own.

Only torch here (no I/O). The sampler does not switch gradients off: call it
under ``torch.no_grad()`` (or ``torch.inference_mode()``) for forecasts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from models.forcings import posix_seconds
from models.seasonal import SeasonalCycle
from models.sfno import SFNO

Interpolate = Callable[..., torch.Tensor]
"""``I(x_t, x_end, i, time=t)`` with ``i`` of shape ``(B,)`` (fraction of the horizon), ``t`` the chain's start time or None."""
Forecast = Callable[..., torch.Tensor]
"""``F(x_s, i, time=t)`` with ``i`` of shape ``(B,)`` (fraction of the horizon), ``t`` the chain's start time or None."""
Constraint = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``C(x_n, x_{n+1}, t_{n+1})``: the emitted state ``x_{n+1}`` (after ``x_n``, valid at POSIX seconds ``t_{n+1}``,
shape ``(B,)``) made to satisfy a known constraint, e.g. :class:`pipeline.ensemble.mass_budget.MassBudgetCorrection`."""

DEFAULT_TIME_SCALE = 100.0

SAMPLERS = ("cold", "jump")
"""Samplers of a trained :class:`DYffusion`: ``cold`` (the paper's, refining) and ``jump`` (one forecaster call per chain)."""


def check_horizon(horizon: int) -> int:
    """``horizon`` as an int, or ValueError unless it is an integer >= 1."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"DYffusion horizon must be an integer >= 1 (time steps per chain), got {horizon!r}")
    return horizon


def time_fraction(i: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """``i`` as a float32 tensor of shape ``(batch,)`` on ``device``."""
    tensor = torch.as_tensor(i, dtype=torch.float32, device=device)
    if tensor.ndim == 0:
        return tensor.expand(batch)
    if tuple(tensor.shape) != (batch,):
        raise ValueError(f"time input must be a number or have shape ({batch},), got {tuple(tensor.shape)}")
    return tensor


class _ConditionedSFNO(nn.Module):
    """Common part of both networks: one conditioned SFNO plus the horizon it was built for."""

    def __init__(self, sfno_in_channels: int, in_channels: int, out_channels: int | None, horizon: int,
                 time_scale: float, sfno_kwargs: dict[str, Any]) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if out_channels != in_channels:
            raise ValueError(f"DYffusion networks map a state to a state: out_channels ({out_channels}) "
                             f"must equal in_channels ({in_channels})")
        if not sfno_kwargs.pop("conditioning", True):
            raise ValueError("DYffusion networks are always time-conditioned (conditioning=False refused)")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.horizon = check_horizon(horizon)
        self.channels = in_channels
        self.time_scale = float(time_scale)
        self.net = SFNO(in_channels=sfno_in_channels, out_channels=out_channels, conditioning=True, **sfno_kwargs)

    def set_static_fields(self, fields: torch.Tensor) -> None:
        """See :meth:`models.sfno.SFNO.set_static_fields`."""
        self.net.set_static_fields(fields)

    def set_increment_scale(self, scale: torch.Tensor) -> None:
        """See :meth:`models.sfno.SFNO.set_increment_scale`."""
        self.net.set_increment_scale(scale)

    def set_output_std(self, std: torch.Tensor) -> None:
        """See :meth:`models.sfno.SFNO.set_output_std`."""
        self.net.set_output_std(std)

    def set_mc_dropout(self, enabled: bool = True) -> None:
        """Keep the dropout active in eval mode (see :meth:`models.sfno.SFNO.set_mc_dropout`)."""
        self.net.set_mc_dropout(enabled)

    def _cond(self, i: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        return self.time_scale * time_fraction(i, x.shape[0], x.device)


class DYffusionInterpolator(_ConditionedSFNO):
    r"""Interpolator :math:`I(x_t, x_{t+h}, i) \approx x_{t+i}` on a conditioned SFNO.

    The SFNO sees ``[x_t, x_{t+h}]`` (``2 * in_channels`` channels) plus its
    static and position inputs; with ``residual`` (default) it predicts the
    change from ``x_t``.

    Parameters
    ----------
    nlat, nlon
        Data grid (see :class:`models.sfno.SFNO`).
    in_channels
        Channels of *one* state.
    out_channels
        Must equal ``in_channels`` (accepted so SFNO-style hyper-parameters fit).
    horizon
        :math:`h`, time steps between the two end states.
    time_scale
        Multiplier of :math:`i \in [0, 1]` before the sinusoidal embedding.
    drop_rate
        Dropout of the SFNO blocks' MLPs; kept on at inference by the sampler.
    **sfno_kwargs
        Further :class:`models.sfno.SFNO` arguments (``embed_dim``,
        ``num_layers``, ``n_static``...); ``conditioning`` is always on.
    """

    def __init__(self, nlat: int, nlon: int, in_channels: int, out_channels: int | None = None, horizon: int = 6,
                 time_scale: float = DEFAULT_TIME_SCALE, drop_rate: float = 0.1, **sfno_kwargs: Any) -> None:
        super().__init__(2 * in_channels, in_channels, out_channels, horizon, time_scale,
                         {"nlat": nlat, "nlon": nlon, "drop_rate": drop_rate, **sfno_kwargs})

    def forward(self, x_start: torch.Tensor, x_end: torch.Tensor, i: torch.Tensor | float, time: object = None) -> torch.Tensor:
        """Estimate the state at fraction ``i`` of the way from ``x_start`` to ``x_end``.

        Parameters
        ----------
        x_start, x_end
            States at ``t`` and ``t + h``, shape ``(B, C, nlat, nlon)``.
        i
            Fraction of the horizon, shape ``(B,)`` or a number.
        time
            The chain's start time ``t`` (for the SFNO's forcings; see :class:`models.sfno.SFNO`).
        """
        if x_start.shape != x_end.shape:
            raise ValueError(f"end states differ in shape: {tuple(x_start.shape)} vs {tuple(x_end.shape)}")
        return self.net(torch.cat([x_start, x_end], dim=1), self._cond(i, x_start), time)


class DYffusionForecaster(_ConditionedSFNO):
    r"""Forecaster :math:`F(x_s, i) \approx x_{t+h}` on a conditioned SFNO.

    Parameters are those of :class:`DYffusionInterpolator` (``drop_rate``
    defaults to 0); the SFNO sees one state.
    """

    def __init__(self, nlat: int, nlon: int, in_channels: int, out_channels: int | None = None, horizon: int = 6,
                 time_scale: float = DEFAULT_TIME_SCALE, drop_rate: float = 0.0, seasonal_harmonics: int = 0,
                 **sfno_kwargs: Any) -> None:
        super().__init__(in_channels, in_channels, out_channels, horizon, time_scale,
                         {"nlat": nlat, "nlon": nlon, "drop_rate": drop_rate, **sfno_kwargs})
        self.seasonal = SeasonalCycle(in_channels, nlat, seasonal_harmonics) if seasonal_harmonics else None

    def forward(self, x: torch.Tensor, i: torch.Tensor | float, time: object = None) -> torch.Tensor:
        """Predict the state at the end of the chain from the state ``x`` reached at fraction ``i``.

        ``time`` is the chain's start time ``t`` (for the SFNO's forcings). With a seasonal
        cycle :math:`d` (:mod:`models.seasonal`) the network maps departures:
        ``N(x - d(t + i h dt)) + d(t + h dt)``, ``dt`` the time step.
        """
        cond = self._cond(i, x)
        if self.seasonal is None:
            return self.net(x, cond, time)
        if time is None:
            raise ValueError("a forecaster with a seasonal cycle needs the chain's start time")
        start = posix_seconds(time, x.shape[0]).to(x.device)
        chain_seconds = self.horizon * self.seasonal.seasonal_step_seconds
        here = self.seasonal(start + time_fraction(i, x.shape[0], x.device).double() * chain_seconds, x.shape[-1])
        there = self.seasonal(start + chain_seconds, x.shape[-1])
        return self.net(x - here.to(x.dtype), cond, time) + there.to(x.dtype)

    def set_seasonal_cycle(self, coefficients: torch.Tensor, step_seconds: float) -> None:
        """See :meth:`models.seasonal.SeasonalCycle.set_coefficients`."""
        if self.seasonal is None:
            raise ValueError("this forecaster was built without a seasonal cycle (seasonal_harmonics 0)")
        self.seasonal.set_coefficients(coefficients, step_seconds)


class ColdSampler:
    r"""DYffusion's cold sampling (formula in the module docstring).

    Parameters
    ----------
    interpolator
        ``I(x_t, x_end, i)``: a :class:`DYffusionInterpolator` or any callable
        of that signature (``i`` of shape ``(B,)``); None only with ``h = 1``.
    forecaster
        ``F(x_s, i)``: a :class:`DYffusionForecaster` or any such callable.
    horizon
        :math:`h`; default: the networks' ``horizon`` attribute (which must agree).
    mc_dropout
        Set the interpolator's Monte Carlo dropout on (stochastic samples) or
        off (deterministic in eval mode) when it has ``set_mc_dropout``;
        None leaves it as it is.
    refine
        True: the paper's cold sampling (the forecaster re-estimates
        :math:`x_{t+h}` at every step); False: jump sampling (one forecaster
        call per chain; module docstring).

    Raises
    ------
    ValueError
        A horizon below 1, no horizon given or known, or networks built for other horizons.
    """

    def __init__(self, interpolator: Interpolate | None, forecaster: Forecast, horizon: int | None = None,
                 mc_dropout: bool | None = True, refine: bool = True) -> None:
        known = {getattr(net, "horizon", None) for net in (interpolator, forecaster)} - {None}
        if horizon is None:
            if len(known) != 1:
                raise ValueError(f"pass horizon: the networks give {sorted(known) or 'none'}")
            horizon = known.pop()
        elif known - {horizon}:
            raise ValueError(f"horizon {horizon} differs from the networks' {sorted(known)}")
        self.horizon = check_horizon(horizon)
        if interpolator is None and self.horizon > 1:
            raise ValueError(f"horizon {self.horizon}: the sampler needs an interpolator (only h = 1 runs without one)")
        self.interpolator = interpolator
        self.forecaster = forecaster
        self.refine = refine
        if mc_dropout is not None and hasattr(interpolator, "set_mc_dropout"):
            interpolator.set_mc_dropout(mc_dropout)

    @property
    def passes_per_step(self) -> float:
        """Network forward passes per emitted step: ``(h + 2 (h - 1)) / h``, or 1 for jump sampling."""
        h = self.horizon
        return (h + 2 * (h - 1)) / h if self.refine else 1.0

    def chain(self, x_start: torch.Tensor, time: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Yield ``x_1, ..., x_h`` of one chain started at ``x_start`` (shape ``(B, C, nlat, nlon)``).

        ``time``: the valid time of ``x_start`` in POSIX seconds (shape ``(B,)``),
        passed to both networks (their forcings), or None.
        """
        yield from self._chain(x_start, self.horizon, time)

    def _chain(self, x_start: torch.Tensor, n_steps: int, time: torch.Tensor | None) -> Iterator[torch.Tensor]:
        h = self.horizon
        batch = x_start.shape[0]

        def fraction(s: int) -> torch.Tensor:
            return torch.full((batch,), s / h, dtype=torch.float32, device=x_start.device)

        x = x_start
        for s in range(n_steps):
            if s == 0 or self.refine:
                forecast = self.forecaster(x, fraction(s), time=time)
            there = forecast if s + 1 == h else self.interpolator(x_start, forecast, fraction(s + 1), time=time)
            # s = 0: x_0 = x_t = I(x_t, ., 0), so x_1 is `there` itself (exactly F(x_t, 0) when h = 1);
            # a fixed forecast telescopes the update to `there` at every step
            x = there if s == 0 or not self.refine else x + there - self.interpolator(x_start, forecast, fraction(s), time=time)
            yield x

    def rollout(self, x0: torch.Tensor, n_steps: int, time: torch.Tensor | None = None,
                step_seconds: float | None = None, constraint: Constraint | None = None) -> Iterator[torch.Tensor]:
        """Yield ``n_steps`` successive states from ``x0``, chaining ``h``-step chains.

        Each chain starts from the last state of the previous one (the state
        at ``t + h``); the last chain stops after the steps still wanted.
        ``time`` (POSIX seconds of ``x0``, shape ``(B,)``) advances by ``h *
        step_seconds`` from chain to chain. ``constraint`` (which needs
        ``time``) is applied to every emitted state, so the constrained end
        of a chain starts the next; inside a chain the sampler goes on from
        its own states.
        """
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if time is not None and step_seconds is None:
            raise ValueError("a rollout with valid times needs step_seconds (the model's time step)")
        if constraint is not None and time is None:
            raise ValueError("a constrained rollout needs valid times")
        start = x0
        remaining = n_steps
        while remaining > 0:
            previous = start
            for s, state in enumerate(self._chain(start, min(self.horizon, remaining), time)):
                if constraint is not None:
                    state = constraint(previous, state, time + (s + 1) * step_seconds)
                    previous = state
                remaining -= 1
                yield state
            start = state
            if time is not None:
                time = time + self.horizon * step_seconds


class DYffusion(nn.Module):
    r"""Trained Spherical DYffusion for forecasts: the forecaster and its interpolator.

    ``forward(x)`` is one emitted step, :math:`x_1` of a chain from ``x``
    (so a one-step forecaster API, e.g. breeding, works unchanged);
    :meth:`rollout` emits any number of steps by chaining the cold sampler
    (or the jump sampler, :meth:`use_sampler`).

    Parameters
    ----------
    forecaster
        The trained :class:`DYffusionForecaster`.
    interpolator
        The :class:`DYffusionInterpolator` it was trained with (None iff ``h = 1``).
    """

    def __init__(self, forecaster: DYffusionForecaster, interpolator: DYffusionInterpolator | None) -> None:
        super().__init__()
        if interpolator is not None and interpolator.horizon != forecaster.horizon:
            raise ValueError(f"interpolator horizon {interpolator.horizon} differs from the forecaster's {forecaster.horizon}")
        self.forecaster = forecaster
        self.interpolator = interpolator
        self.sampler = ColdSampler(interpolator, forecaster, forecaster.horizon, mc_dropout=None)

    @property
    def horizon(self) -> int:
        return self.sampler.horizon

    @property
    def passes_per_step(self) -> float:
        """Network passes per emitted step, :math:`(3h - 2) / h` (1 for jump sampling)."""
        return self.sampler.passes_per_step

    def use_sampler(self, kind: str) -> None:
        """Sample with ``cold`` (the default: the paper's refining cold sampling) or ``jump``."""
        if kind not in SAMPLERS:
            raise ValueError(f"unknown DYffusion sampler {kind!r}: choose one of {', '.join(SAMPLERS)}")
        self.sampler.refine = kind == "cold"

    def forward(self, x: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        """The first emitted step of a chain started at ``x`` (valid at ``time``, POSIX seconds)."""
        return next(self.sampler.chain(x, time))

    def rollout(self, x: torch.Tensor, n_steps: int, time: torch.Tensor | None = None,
                step_seconds: float | None = None, constraint: Constraint | None = None) -> Iterator[torch.Tensor]:
        """``n_steps`` emitted states from ``x`` (see :meth:`ColdSampler.rollout`)."""
        return self.sampler.rollout(x, n_steps, time, step_seconds, constraint)
