"""Hemispheric-centred bred vectors, bred through real dynamical operators.

The one-step maps are real: torch-harmonics' shallow-water solver (nonlinear
dynamics on the rotating sphere, the state being geopotential, vorticity and
divergence, called z500 / vo500 / d500 here) and an untrained SFNO from
:func:`models.registry.build_model` in eval mode (a batched network step).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest
import torch
from torch_harmonics.examples import ShallowWaterSolver

from models.registry import build_model
from pipeline.ensemble.bred_vectors import (
    breed,
    breeding_times,
    bred_vector_target,
    centred_members,
    channel_mask,
    extratropical_rms,
    hemispheric_rescale_factor,
    non_negative_mask,
    perturbed_states,
    rescale_hemispheric,
    seed_perturbations,
)
from pipeline.ensemble.plan import EnsemblePlan
from pipeline.ensemble.seed_field import SphericalSeedField
from pipeline.errors import MyriadError
from pipeline.grid import Grid

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # inside torch-harmonics' solver

GRID = Grid(32, 64)
CHANNELS = ["z500", "vo500", "d500"]
RMSE_48H = {"z500": 300.0, "vo500": 6e-6, "d500": 6e-7}
SOLVER_DT_S = 600.0
STEPS_PER_CYCLE = 36  # 6 h
N_PAIRS = 5
INIT = "2000-01-15T00:00"
Step = Callable[[torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module")
def solver() -> ShallowWaterSolver:
    return ShallowWaterSolver(GRID.nlat, GRID.nlon, dt=SOLVER_DT_S, lmax=16, mmax=16)


@pytest.fixture(scope="module")
def shallow_water_step(solver: ShallowWaterSolver) -> Step:
    """6 h of the shallow-water equations on each state of a batch (float32 in and out)."""

    def step(x: torch.Tensor) -> torch.Tensor:
        out = [solver.spec2grid(solver.timestep(solver.grid2spec(state), STEPS_PER_CYCLE)) for state in x.double()]
        return torch.stack(out).float()

    return step


@pytest.fixture(scope="module")
def analyses(solver: ShallowWaterSolver) -> torch.Tensor:
    """A 'reanalysis': the Galewsky jet after one day, then every 6 h: (4, 3, H, W) for t0-18h .. t0."""
    spec = solver.timestep(solver.galewsky_initial_condition(), 4 * STEPS_PER_CYCLE)
    states = []
    for _ in range(4):
        states.append(solver.spec2grid(spec).float())
        spec = solver.timestep(spec, STEPS_PER_CYCLE)
    return torch.stack(states)


@pytest.fixture(scope="module")
def sfno_step(analyses: torch.Tensor) -> Step:
    """An untrained SFNO in eval mode, wrapped to act on physical units."""
    torch.manual_seed(0)
    model = build_model("sfno", nlat=GRID.nlat, nlon=GRID.nlon, in_channels=len(CHANNELS), embed_dim=16, num_layers=2).eval()
    mean = analyses.mean(dim=(0, 2, 3), keepdim=True)[0]
    std = analyses.std(dim=(0, 2, 3), keepdim=True)[0]

    def step(x: torch.Tensor) -> torch.Tensor:
        return model((x - mean) / std) * std + mean

    return step


@pytest.fixture(scope="module")
def seeds() -> list[int]:
    plan = EnsemblePlan.build([INIT], ["ckpt-0.pt"], n_pairs=N_PAIRS)
    pair_members = [m for m in plan.members if m.sign == +1]
    return [plan.seed(m, INIT) for m in pair_members]


@pytest.fixture(scope="module")
def seed_field() -> SphericalSeedField:
    return SphericalSeedField(GRID, correlation_length_m=1000e3)


@pytest.fixture(scope="module")
def target() -> torch.Tensor:
    return bred_vector_target(RMSE_48H, CHANNELS, alpha=0.35)


@pytest.fixture(scope="module")
def bred(
    shallow_water_step: Step, analyses: torch.Tensor, target: torch.Tensor, seeds: list[int], seed_field: SphericalSeedField
) -> torch.Tensor:
    return breed(shallow_water_step, analyses[:3], target, channel_mask(CHANNELS, ["z500"]), seeds, seed_field)


def test_extratropical_rms_of_dx_equals_target(
    bred: torch.Tensor, target: torch.Tensor, seeds: list[int], seed_field: SphericalSeedField
) -> None:
    assert bred.shape == (N_PAIRS, 3, GRID.nlat, GRID.nlon) and bred.dtype == torch.float32
    north, south = extratropical_rms(bred, GRID)
    expected = target.double().expand(N_PAIRS, 3)
    torch.testing.assert_close(north, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(south, expected, rtol=1e-5, atol=0)
    # the dynamics moved the seed (z500 only) into the coupled channels and reshaped it
    assert (bred[:, 1:].abs().amax(dim=(-2, -1)) > 0).all()
    seed = seed_perturbations(seed_field, seeds, channel_mask(CHANNELS, ["z500"]), target)[:, 0].flatten(1).double()
    z500 = bred[:, 0].flatten(1).double()
    cosine = (seed * z500).sum(1) / (seed.norm(dim=1) * z500.norm(dim=1))
    assert (cosine.abs() < 0.9).all(), cosine


def test_tropical_rescale_factor_is_linear_in_latitude(seed_field: SphericalSeedField, target: torch.Tensor) -> None:
    dx = torch.randn(2, 3, GRID.nlat, GRID.nlon, generator=torch.Generator().manual_seed(1))
    dx[:, :, GRID.latitudes < 0] *= 3.0  # different amplitude in each hemisphere
    factor = hemispheric_rescale_factor(dx, target, GRID)
    north, south = extratropical_rms(dx, GRID)
    lat = torch.as_tensor(GRID.latitudes, dtype=torch.float64)
    f_north, f_south = target.double() / north, target.double() / south
    torch.testing.assert_close(factor[..., lat >= 20], f_north[..., None].expand(-1, -1, int((lat >= 20).sum())))
    torch.testing.assert_close(factor[..., lat <= -20], f_south[..., None].expand(-1, -1, int((lat <= -20).sum())))
    tropics = (lat > -20) & (lat < 20)
    linear = f_south[..., None] + (f_north - f_south)[..., None] * (lat[tropics] + 20) / 40
    torch.testing.assert_close(factor[..., tropics], linear)
    # and the rescaled field is the raw one times that factor, row by row
    rescaled = rescale_hemispheric(dx, target, GRID)
    torch.testing.assert_close(rescaled, dx * factor[..., None].float(), rtol=1e-6, atol=0)


def test_pair_mean_equals_control(bred: torch.Tensor, analyses: torch.Tensor) -> None:
    x0 = analyses[3]
    members = centred_members(x0, bred, include_control=True, non_negative=non_negative_mask(CHANNELS))
    assert members.shape == (2 * N_PAIRS + 1, 3, GRID.nlat, GRID.nlon)
    assert torch.equal(members[0], x0)
    plus, minus = members[1::2], members[2::2]
    centred = (plus + minus) / 2 == x0  # float32 arithmetic, bit for bit
    assert centred[(bred.abs() < x0.abs()).expand_as(centred)].all()  # wherever |dx| < |x0| ...
    assert centred[:, 0].all()  # ... so everywhere for z500: the pair mean is the control exactly
    # each member is x0 +- dx to half an ulp of the larger member
    spacing = torch.from_numpy(np.maximum(np.spacing(plus.abs().numpy()), np.spacing(minus.abs().numpy()))).double()
    assert ((plus.double() - (x0.double() + bred.double())).abs() <= spacing / 2).all()
    assert ((minus.double() - (x0.double() - bred.double())).abs() <= spacing / 2).all()
    # where the mean is not exact no float32 pair near x0 +- dx sums to 2 x0 (tried: 9 float32 neighbours of x0 + dx)
    two_x0 = 2 * x0.double().expand_as(plus)[~centred].numpy()
    candidate = plus[~centred].numpy()
    for _ in range(4):
        candidate = np.nextafter(candidate, np.float32(-np.inf))
    for _ in range(9):
        other = two_x0 - candidate.astype(np.float64)
        assert (other.astype(np.float32).astype(np.float64) != other).all()
        candidate = np.nextafter(candidate, np.float32(np.inf))
    assert (~centred).any()  # vo500/d500 have points with |dx| > |x0|, where exact centring cannot exist


def test_clipping_after_pairing_keeps_centring_where_nothing_was_clipped(bred: torch.Tensor) -> None:
    channels = ["tcwv", "vo500", "q700"]
    shape = (GRID.nlat, GRID.nlon)
    x0 = torch.stack([torch.full(shape, 5.0), torch.zeros(shape), torch.full(shape, 1e-3)])
    dx = torch.stack([bred[:, 0] / 30.0, bred[:, 1], bred[:, 0] * 1e-5], dim=1)  # tcwv and q700 dx sometimes exceed x0
    mask = non_negative_mask(channels)
    assert mask.tolist() == [True, False, True]
    members = centred_members(x0, dx, include_control=False, non_negative=mask)
    plus, minus = members[0::2], members[1::2]
    unclipped = centred_members(x0, dx, include_control=False, non_negative=torch.zeros(3, dtype=torch.bool))
    unclipped_plus, unclipped_minus = unclipped[0::2], unclipped[1::2]
    clipped = (unclipped_plus < 0) | (unclipped_minus < 0)
    assert clipped[:, [0, 2]].any() and not clipped[:, [0, 2]].all()
    assert (members[:, [0, 2]] >= 0).all()
    assert (members[:, 1] < 0).any()  # vorticity is not clipped
    for c in (0, 2):
        keep = ~clipped[:, c]
        torch.testing.assert_close(plus[:, c][keep], unclipped_plus[:, c][keep], rtol=0, atol=0)
        torch.testing.assert_close(minus[:, c][keep], unclipped_minus[:, c][keep], rtol=0, atol=0)
        mean = 0.5 * (plus[:, c].double() + minus[:, c].double())
        torch.testing.assert_close(mean[keep], x0[c].double().expand_as(mean)[keep], rtol=0, atol=0)
        assert (mean[clipped[:, c]] > x0[c].double().expand_as(mean)[clipped[:, c]]).all()  # clipping raised the mean


def test_states_of_a_member_block_equal_the_centred_members(bred: torch.Tensor) -> None:
    channels = ["tcwv", "vo500", "q700"]
    shape = (GRID.nlat, GRID.nlon)
    x0 = torch.stack([torch.full(shape, 5.0), torch.zeros(shape), torch.full(shape, 1e-3)])
    dx = torch.stack([bred[:, 0] / 30.0, bred[:, 1], bred[:, 0] * 1e-5], dim=1)
    mask = non_negative_mask(channels)
    full = centred_members(x0, dx, include_control=True, non_negative=mask)  # control, (0,+), (0,-), (1,+), (1,-), (2,+)...
    # a block that starts inside pair 1 and holds a control (as blocks spanning checkpoints do)
    block = perturbed_states(x0, dx[[1, 0, 2]], torch.tensor([-1, 0, +1]), mask)
    assert torch.equal(block, full[[4, 0, 5]])


def test_breeding_times_end_one_step_before_the_init_time() -> None:
    times = breeding_times("2000-01-15T00:00", 3, timedelta(hours=6))
    assert [str(t) for t in times] == ["2000-01-14T06:00:00", "2000-01-14T12:00:00", "2000-01-14T18:00:00"]


@pytest.mark.parametrize("operator", ["shallow_water_step", "sfno_step"])
def test_member_regenerated_alone_equals_its_copy(
    operator: str,
    request: pytest.FixtureRequest,
    analyses: torch.Tensor,
    target: torch.Tensor,
    seeds: list[int],
    seed_field: SphericalSeedField,
) -> None:
    step = request.getfixturevalue(operator)
    mask = channel_mask(CHANNELS, ["z500"])
    if operator == "shallow_water_step":
        full = request.getfixturevalue("bred")  # the shared full breed
    else:
        full = breed(step, analyses[:3], target, mask, seeds, seed_field)
    alone = breed(step, analyses[:3], target, mask, [seeds[3]], seed_field)
    assert torch.equal(alone[0], full[3])
    no_clip = torch.zeros(3, dtype=torch.bool)
    members = centred_members(analyses[3], full, include_control=False, non_negative=no_clip)
    pair = centred_members(analyses[3], alone, include_control=False, non_negative=no_clip)
    assert torch.equal(pair, members[6:8])
    assert not torch.equal(full[3], full[2])  # pairs differ


def test_bad_inputs_raise_clear_errors(
    shallow_water_step: Step, analyses: torch.Tensor, target: torch.Tensor, seeds: list[int], seed_field: SphericalSeedField
) -> None:
    with pytest.raises(MyriadError, match="no 48 h RMSE for channel 'd500'"):
        bred_vector_target({"z500": 1.0, "vo500": 1.0}, CHANNELS)
    with pytest.raises(MyriadError, match="'z850' is not one of the model's channels"):
        channel_mask(CHANNELS, ["z850"])
    broken = analyses[:3].clone()
    broken[1, 0, 5, 5] = float("nan")
    with pytest.raises(MyriadError, match="non-finite values in breeding cycle 2/3"):
        breed(shallow_water_step, broken, target, channel_mask(CHANNELS, ["z500"]), seeds[:1], seed_field)
