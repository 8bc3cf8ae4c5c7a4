r"""Exponential moving average (EMA) of a network's weights, the weights that forecasts use.

After every optimiser step :math:`n = 1, 2, \ldots` each floating-point
parameter's average :math:`\bar\theta` moves towards the live weights
:math:`\theta_n`:

.. math::

    \bar\theta_n = \beta_n \bar\theta_{n-1} + (1 - \beta_n)\,\theta_n,
    \qquad \beta_n = \min\Big(\beta, \frac{1 + n}{10 + n}\Big),

starting from :math:`\bar\theta_0 = \theta_0`, the weights when averaging
began (a fresh network, or a resumed run's weights when averaging is switched
on for a fine-tune). The warm-up of :math:`\beta_n` keeps the first updates
from being dominated by the initial weights; after it the average spans
about :math:`1 / (1 - \beta)` steps. Buffers (static input fields, increment
scales) are not averaged: they are copied from the live network.

Averaged weights smooth out the last steps' noise of the optimiser, which
weather emulators use for steadier long rollouts (ACE trains with an EMA of
its weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """The running EMA of ``model``'s floating-point parameters (``decay`` is :math:`\\beta`).

    ``updates`` is :math:`n`, the number of averaged optimiser steps so far;
    :meth:`load` restores both from a checkpoint for exact resume.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.average = {name: p.detach().clone() for name, p in self._averaged(model)}

    @staticmethod
    def _averaged(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        return ((name, p) for name, p in model.named_parameters() if p.dtype.is_floating_point)

    def decay_at(self, update: int) -> float:
        r""":math:`\beta_n = \min(\beta, (1 + n) / (10 + n))` of update number :math:`n`."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in the live weights after one optimiser step (one fused lerp over all tensors)."""
        self.updates += 1
        beta = self.decay_at(self.updates)
        live = dict(self._averaged(model))
        torch._foreach_lerp_([self.average[name] for name in live], [p.detach() for p in live.values()], 1.0 - beta)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the averaged parameters in place of the live ones."""
        return {name: self.average.get(name, value).detach().clone() for name, value in model.state_dict().items()}

    def load(self, state_dict: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the averages (from a :meth:`state_dict`) and the update count."""
        for name, value in self.average.items():
            value.copy_(state_dict[name])
        self.updates = updates

    def is_finite(self) -> bool:
        """Whether every averaged parameter is finite."""
        return bool(torch.stack([torch.isfinite(value).all() for value in self.average.values()]).all())

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run a block (validation) with the averaged weights in ``model``; the live ones return after."""
        live = {name: p.detach().clone() for name, p in self._averaged(model)}
        with torch.no_grad():
            for name, p in self._averaged(model):
                p.copy_(self.average[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._averaged(model):
                    p.copy_(live[name])
