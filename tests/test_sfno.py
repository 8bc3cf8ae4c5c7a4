"""The SFNO module: residual prediction, symmetry, conditioning, MC dropout, precision, registry."""

from __future__ import annotations

import pytest
import torch

from models.registry import MODEL_KINDS, build_model
from models.sfno import SFNO
from models.spectral import BandLimit, SpectralAnalysis, SpectralSynthesis
from torch_harmonics import RealSHT

torch.set_num_threads(1)

NLAT, NLON = 17, 32


def tiny(**overrides) -> SFNO:
    hparams = {"nlat": NLAT, "nlon": NLON, "in_channels": 3, "embed_dim": 16, "num_layers": 3, "scale_factor": 2}
    hparams.update(overrides)
    torch.manual_seed(0)
    return build_model("sfno", **hparams).eval()


def test_residual_prediction_adds_the_decoded_increment() -> None:
    model = tiny()
    x = torch.randn(2, 3, NLAT, NLON)
    assert model(x).shape == (2, 3, NLAT, NLON)
    torch.nn.init.zeros_(model.decoder.weight)
    assert torch.equal(model(x), x)
    direct = tiny(residual=False)
    torch.nn.init.zeros_(direct.decoder.weight)
    assert torch.count_nonzero(direct(x)) == 0


def test_residual_with_more_inputs_than_outputs_adds_the_leading_channels() -> None:
    model = tiny(in_channels=6, out_channels=3)
    torch.nn.init.zeros_(model.decoder.weight)
    x = torch.randn(2, 6, NLAT, NLON)
    assert torch.equal(model(x), x[:, :3])
    with pytest.raises(ValueError, match="in_channels >= out_channels"):
        tiny(in_channels=2, out_channels=3)


def test_spherical_blocks_commute_with_longitude_rotation() -> None:
    """Without position features the network is equivariant to rotations about the polar axis.

    A shift by 2 data columns is 1 column of the internal grid (scale factor 2),
    which the SHT maps to a phase factor per order m: exact up to rounding.
    """
    model = tiny(lat_lon_features=False, normalization="instance")
    x = torch.randn(2, 3, NLAT, NLON)
    rotated_first = model(torch.roll(x, shifts=2, dims=-1))
    rotated_after = torch.roll(model(x), shifts=2, dims=-1)
    torch.testing.assert_close(rotated_first, rotated_after, rtol=1e-4, atol=1e-4)
    with_features = tiny(lat_lon_features=True)
    assert not torch.allclose(with_features(torch.roll(x, 2, -1)), torch.roll(with_features(x), 2, -1), atol=1e-3)


def test_increments_stay_within_the_resolved_degrees() -> None:
    """The output increment has no power beyond the blocks' truncation (here 8 = min(9, 16 // 2))."""
    full = RealSHT(NLAT, NLON, lmax=(NLAT + 1) // 2, mmax=(NLAT + 1) // 2).float()
    x = torch.randn(2, 3, NLAT, NLON)

    @torch.no_grad()
    def power_beyond(model: SFNO) -> float:
        coefficients = full(model(x) - x)
        return float(coefficients[..., 8:, :].abs().square().sum() + coefficients[..., :, 8:].abs().square().sum())

    limited = tiny()
    assert limited.sht_data.lmax == 8
    with torch.no_grad():
        total = float(full(limited(x) - x).abs().square().sum())
    assert power_beyond(limited) < 1e-8 * total
    assert power_beyond(tiny(bandlimit_output=False)) > 1e-3


def test_increment_scale_multiplies_the_decoded_increment() -> None:
    model = tiny()
    x = torch.randn(1, 3, NLAT, NLON)
    delta = model(x) - x
    model.set_increment_scale(torch.tensor([0.0, 1.0, 10.0]))
    scaled = model(x) - x
    assert torch.count_nonzero(scaled[:, 0]) == 0
    torch.testing.assert_close(scaled[:, 1], delta[:, 1])
    torch.testing.assert_close(scaled[:, 2], 10.0 * delta[:, 2], rtol=1e-4, atol=1e-5)
    rebuilt = tiny()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.increment_scale, torch.tensor([0.0, 1.0, 10.0]))


def test_static_fields_are_inputs_and_saved_with_the_weights() -> None:
    model = tiny(n_static=2)
    x = torch.randn(1, 3, NLAT, NLON)
    before = model(x)
    fields = torch.randn(2, NLAT, NLON)
    model.set_static_fields(fields)
    assert not torch.allclose(model(x), before)
    rebuilt = tiny(n_static=2)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.static_fields, fields)
    assert torch.equal(rebuilt(x), model(x))
    assert "position_features" not in model.state_dict()
    with pytest.raises(ValueError, match="shape"):
        model.set_static_fields(torch.zeros(3, NLAT, NLON))


def test_time_conditioning_scales_and_shifts_each_block() -> None:
    model = tiny(conditioning=True, cond_embed_dim=8)
    x = torch.randn(2, 3, NLAT, NLON)
    t1, t2 = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])
    # FiLM starts at zero: an untrained conditioned model ignores the time
    assert torch.equal(model(x, t1), model(x, t2))
    for block in model.blocks:
        torch.nn.init.normal_(block.film.weight, std=0.5)
    out1, out2 = model(x, t1), model(x, t2)
    assert not torch.allclose(out1, out2)
    assert torch.equal(model(x, t1), out1)
    mixed = model(x, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(mixed[0], out1[0])
    torch.testing.assert_close(mixed[1], out2[1])
    with pytest.raises(ValueError, match="cond is required"):
        model(x)
    with pytest.raises(ValueError, match="cond is required"):
        tiny()(x, t1)


def test_mc_dropout_stays_on_in_eval_mode_when_asked() -> None:
    model = tiny(drop_rate=0.3)
    x = torch.randn(1, 3, NLAT, NLON)
    assert torch.equal(model(x), model(x))
    model.set_mc_dropout(True)
    assert not model.training
    assert not torch.equal(model(x), model(x))
    model.set_mc_dropout(False)
    assert torch.equal(model(x), model(x))


def test_transforms_run_in_float32_under_bf16_autocast() -> None:
    model = tiny()
    seen: list[torch.dtype] = []
    for transform in model.modules():
        if isinstance(transform, (SpectralAnalysis, SpectralSynthesis, BandLimit)):
            transform.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    pointwise: list[torch.dtype] = []
    model.encoder.register_forward_hook(lambda module, args, out: pointwise.append(out.dtype))
    x = torch.randn(2, 3, NLAT, NLON)
    reference = model(x)
    seen.clear()
    pointwise.clear()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x)
    # 3 blocks: 2 transforms each (the first and last resample their skip in the same inverse
    # transform), and the band limit of the output
    assert len(seen) == 7 and set(seen) == {torch.float32}
    assert pointwise == [torch.bfloat16]
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0.1, atol=0.1)


def test_registry_rebuilds_a_model_from_plain_hyper_parameters() -> None:
    hparams = {"nlat": NLAT, "nlon": NLON, "in_channels": 3, "embed_dim": 8, "num_layers": 2, "n_static": 1}
    first = build_model("sfno", **hparams)
    second = build_model("sfno", **hparams)
    second.load_state_dict(first.state_dict())
    x = torch.randn(1, 3, NLAT, NLON)
    assert torch.equal(first.eval()(x), second.eval()(x))
    assert "sfno" in MODEL_KINDS
    with pytest.raises(KeyError, match="unknown model kind 'unet'"):
        build_model("unet", **hparams)
    with pytest.raises(TypeError):
        build_model("sfno", nlat=NLAT, nlon=NLON, in_channels=3, colour="blue")


def test_gradients_reach_every_parameter() -> None:
    model = tiny(conditioning=True, n_static=1, drop_rate=0.1).train()
    for block in model.blocks:
        torch.nn.init.normal_(block.film.weight, std=0.1)
    out = model(torch.randn(2, 3, NLAT, NLON), torch.tensor([0.5, 2.0]))
    out.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_wind_pairs_are_band_limited_as_one_vector_field_in_physical_units() -> None:
    """Channels (1, 2) as (u, v): their increments in physical units (decoded x increment scale x std) are fixed by
    the vector projection and have zero zonal mean on the pole rows; channel 0 is what the scalar model gives."""
    scalar, vector = tiny(), tiny(wind_pairs=[[1, 2]])
    vector.load_state_dict(scalar.state_dict(), strict=False)
    increment_scale, std = torch.tensor([0.2, 0.3, 0.1]), torch.tensor([900.0, 12.0, 7.0])
    for model in (scalar, vector):
        model.set_increment_scale(increment_scale)
    vector.set_output_std(std)
    x = torch.randn(2, 3, NLAT, NLON)
    with torch.no_grad():
        scalar_out, vector_out = scalar(x), vector(x)
    torch.testing.assert_close(vector_out[:, 0], scalar_out[:, 0])
    wind = (vector_out - x)[:, 1:] * std[1:, None, None]
    projected_u, projected_v = vector.wind_band_limit(wind[:, 0], wind[:, 1])
    torch.testing.assert_close(projected_u, wind[:, 0], rtol=0, atol=1e-4)
    torch.testing.assert_close(projected_v, wind[:, 1], rtol=0, atol=1e-4)
    assert float(wind[:, :, [0, -1]].mean(dim=-1).abs().max()) < 1e-5
    assert float(((scalar_out - x)[:, 1:, [0, -1]].mean(dim=-1)).abs().max()) > 1e-3  # the scalar model's is free
    rebuilt = tiny(wind_pairs=[[1, 2]])
    rebuilt.load_state_dict(vector.state_dict())
    assert torch.equal(rebuilt.output_std, std)


def test_wind_pairs_are_checked() -> None:
    for bad in ([[1, 1]], [[0, 3]], [[0, 1], [1, 2]], [[0, 1, 2]]):
        with pytest.raises(ValueError, match="wind_pairs must be"):
            tiny(wind_pairs=bad)
    with pytest.raises(ValueError, match="bandlimit_output"):
        tiny(wind_pairs=[[1, 2]], bandlimit_output=False)
    with pytest.raises(ValueError, match="only by a model with wind_pairs"):
        tiny().set_output_std(torch.ones(3))
