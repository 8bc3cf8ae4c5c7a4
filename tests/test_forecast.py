"""Forecasts clip non-negative channels (precipitation, humidity) at zero in every emitted state, and only there."""

from __future__ import annotations

import numpy as np
import torch

from models.dyffusion import DYffusion
from models.registry import build_model
from models.sfno import SFNO
from pipeline.training.forecast import Forecaster
from pipeline.training.normalisation import Normalisation

torch.set_num_threads(1)

NLAT, NLON = 9, 16
CHANNELS = ("z500", "tp6h")
NORMALISATION = Normalisation(CHANNELS, np.array([5.5e4, 0.8]), np.array([3.0e3, 1.5]))


def physical_state(batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    z500 = 5.5e4 + 3.0e3 * torch.randn(batch, 1, NLAT, NLON)
    tp6h = torch.rand(batch, 1, NLAT, NLON)  # 0 .. 1 kg m-2, dry somewhere
    return torch.cat([z500, tp6h], dim=1)


def noisy_sfno() -> SFNO:
    """A real SFNO whose tp6h increments (x 20) swing far below zero."""
    torch.manual_seed(0)
    model = SFNO(NLAT, NLON, len(CHANNELS), embed_dim=8, num_layers=1)
    model.set_increment_scale(torch.tensor([1.0, 20.0]))
    return model


def test_sfno_forecasts_clip_emitted_precipitation_at_zero_and_leave_other_channels_alone() -> None:
    state = physical_state()
    forecaster = Forecaster(noisy_sfno(), NORMALISATION, bf16=False)
    raw = noisy_sfno().eval()
    with torch.no_grad():
        unclipped = NORMALISATION.denormalise(raw(NORMALISATION.normalise(state)))
    assert float(unclipped[:, 1].min()) < -1.0  # what the network alone would emit
    stepped = forecaster.step(state)
    torch.testing.assert_close(stepped[:, 1], unclipped[:, 1].clamp(min=0.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped[:, 0], unclipped[:, 0])
    states = list(forecaster.rollout(state, 4))
    z = NORMALISATION.normalise(state)
    for emitted in states:  # the rollout carries on from the network's own, unclipped state
        with torch.no_grad():
            z = raw(z)
        unclipped = NORMALISATION.denormalise(z)
        assert float(unclipped[:, 1].min()) < -1.0
        torch.testing.assert_close(emitted[:, 1], unclipped[:, 1].clamp(min=0.0), rtol=0, atol=1e-3)
        torch.testing.assert_close(emitted[:, 0], unclipped[:, 0], rtol=1e-5, atol=1e-1)


def test_dyffusion_forecasts_clip_every_emitted_state_but_chain_from_the_samplers_own() -> None:
    hparams = {"nlat": NLAT, "nlon": NLON, "in_channels": len(CHANNELS), "horizon": 2, "embed_dim": 8, "num_layers": 1}
    torch.manual_seed(0)
    forecaster_net = build_model("dyffusion_forecaster", **hparams)
    interpolator_net = build_model("dyffusion_interpolator", **hparams)
    for network in (forecaster_net, interpolator_net):
        network.set_increment_scale(torch.tensor([1.0, 20.0]))
    model = DYffusion(forecaster_net, interpolator_net).eval()
    states = list(Forecaster(model, NORMALISATION, bf16=False).rollout(physical_state(), 5))
    with torch.no_grad():
        unclipped = [NORMALISATION.denormalise(z) for z in model.rollout(NORMALISATION.normalise(physical_state()), 5)]
    assert len(states) == 5 and all(float(u[:, 1].min()) < -1.0 for u in unclipped)
    for emitted, raw in zip(states, unclipped):  # chains restart from the sampler's own states
        torch.testing.assert_close(emitted[:, 1], raw[:, 1].clamp(min=0.0), rtol=0, atol=1e-3)
        torch.testing.assert_close(emitted[:, 0], raw[:, 0], rtol=1e-5, atol=1e-1)
