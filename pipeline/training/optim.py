r"""Optimiser and learning-rate schedule.

AdamW with decoupled weight decay on the weight matrices and spectral
weights (parameters with two or more dimensions); biases and normalisation
scales are not decayed. The learning rate follows a linear warm-up then a
cosine decay to a floor:

.. math::

    \eta(s) = \eta_0 \cdot
    \begin{cases}
      (s + 1) / W & s < W \\
      r + (1 - r)\,\tfrac12\big(1 + \cos(\pi p)\big) & s \ge W
    \end{cases}
    \qquad p = \min\Big(1, \max\Big(\frac{s - W}{S - W}, \frac{t}{T}\Big)\Big)

for step :math:`s`, warm-up :math:`W`, total steps :math:`S`, floor ratio
:math:`r`, and, when a time budget :math:`T` is set
(``training.max_minutes``), the training time spent :math:`t`: a run that
the budget will stop early still anneals to the floor by its end. (Without a
budget the schedule depends on the step alone, as exact resume needs.)
"""

from __future__ import annotations

import math

import torch
from torch import nn


_FUSED_DEVICES = ("cpu", "cuda")
"""Devices with a fused AdamW kernel in every torch this project supports."""


def cosine_with_warmup(step: int, warmup: int, total: int, floor: float, time_fraction: float = 0.0) -> float:
    """Multiplier of the base learning rate (formula in the module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of two or more dimensions only.

    Uses torch's fused AdamW kernel (one pass over all parameters; the same
    update up to float rounding) where the parameters' device has one (CPU
    and CUDA), else the default implementation.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    params = decay + no_decay
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
