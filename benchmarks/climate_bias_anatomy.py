"""Where a 10-year DYffusion climate's zonal-mean bias lives, from the profiles stored in benchmark JSON files.

For every ``benchmarks/dyffusion.py`` result that holds time-mean zonal-mean
profiles (``climate.<model>.<channel>.zonal_mean_model`` and ``..._planet``),
this gives, per channel, the share of the squared zonal-mean bias poleward of
60 degrees and the bias equatorward of 60 over the planet's zonal contrast;
and v500's bias split by the planet's steady zonal mass budget
(:mod:`pipeline.data.sources.planet_budget`), in wind units (flux divided by
the planet's global-mean geopotential ``<Phi>``):

* ``implied_by_z500``: ``(F_bal([Phi]_model) - F_bal([Phi]_planet)) / <Phi>``,
  the v500 bias that the run's z500 bias implies through the budget;
* ``budget_residual``: ``([Phi]_model [v]_model - F_bal([Phi]_model)) / <Phi>``,
  the part of its mean meridional mass flux that its own z500 does not
  balance; the same for the planet's profiles is its closure.

The profiles are time means, so the mean-circulation flux ``[Phi][v]`` stands
for the total ``[Phi v]``: on the planet the eddy and seasonal covariance part
is 0.001 m/s of 0.15 (``benchmarks/dyffusion.py`` now accumulates the total).

    python benchmarks/climate_bias_anatomy.py benchmarks/results/dyffusion_climate_*.json \\
        --output benchmarks/results/dyffusion_climate_bias_anatomy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dyffusion import bias_by_latitude_band, zonal_contrast, zonal_rms  # benchmarks/dyffusion.py, beside this script
from pipeline.config import PlanetSourceConfig, load_config
from pipeline.data.sources.planet_budget import balanced_geopotential_flux, equilibrium_zonal_geopotential
from pipeline.grid import latitude_weights


def anatomy(climate: dict, model: str, source: PlanetSourceConfig) -> dict:
    """Per-channel latitude split and v500's mass-budget split of one run's climate table."""
    latitudes = np.asarray(climate["latitudes"])
    w = latitude_weights(latitudes)
    run = climate[model]
    out: dict = {}
    for channel, table in run.items():
        if not (isinstance(table, dict) and "zonal_mean_model" in table):
            continue
        model_profile, planet_profile = np.asarray(table["zonal_mean_model"]), np.asarray(table["zonal_mean_planet"])
        scale = zonal_contrast(planet_profile, w)
        out[channel] = {"zonal_mean_rms_bias_relative": zonal_rms(model_profile - planet_profile, w) / scale,
                        **bias_by_latitude_band(model_profile - planet_profile, latitudes, scale)}
    if "z500" in out and "v500" in out:
        z_model, z_planet = (np.asarray(run["z500"][k]) for k in ("zonal_mean_model", "zonal_mean_planet"))
        v_model, v_planet = (np.asarray(run["v500"][k]) for k in ("zonal_mean_model", "zonal_mean_planet"))
        mean_geopotential = float(np.average(z_planet, weights=w))
        equilibrium = equilibrium_zonal_geopotential(latitudes, source)  # whole years: the seasonal term averages out

        def balanced(profile: np.ndarray) -> np.ndarray:
            return balanced_geopotential_flux(profile, equilibrium, latitudes, source.relaxation_days) / mean_geopotential

        implied = balanced(z_model) - balanced(z_planet)
        residual = z_model * v_model / mean_geopotential - balanced(z_model)
        scale = zonal_contrast(v_planet, w)
        out["v500_mass_budget"] = {
            "bias_wind_rms": zonal_rms(v_model - v_planet, w),
            "implied_by_z500_wind_rms": zonal_rms(implied, w), "implied_by_z500_relative": zonal_rms(implied, w) / scale,
            "budget_residual_wind_rms": zonal_rms(residual, w), "budget_residual_relative": zonal_rms(residual, w) / scale,
            "planet_budget_residual_wind_rms": zonal_rms(z_planet * v_planet / mean_geopotential - balanced(z_planet), w),
            "implied_by_z500_wind": implied.tolist(), "budget_residual_wind": residual.tolist()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="benchmarks/dyffusion.py result JSON files")
    parser.add_argument("--config", default="configs/dyffusion-climate.yaml", help="the planet the runs emulate")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    source = load_config(args.config).source
    if not isinstance(source, PlanetSourceConfig):
        raise SystemExit(f"{args.config}: the mass budget is the planet's; this config's source is {source.kind}")
    runs = {}
    for path in args.results:
        climate = json.loads(path.read_text()).get("climate", {})
        if "latitudes" not in climate:
            continue
        for model in [k for k, v in climate.items() if isinstance(v, dict) and "v500" in v]:
            runs[f"{path.name}:{model}"] = result = anatomy(climate, model, source)
            b, v = result.get("v500_mass_budget"), result["v500"]
            print(f"{path.name}:{model}: v500 {v['zonal_mean_rms_bias_relative']:.2f} of contrast "
                  f"({v['polar_share_of_squared_bias']:.0%} of its square poleward of 60, "
                  f"{v['zonal_mean_rms_bias_relative_equatorward_of_60']:.2f} equatorward)"
                  + (f"; implied by z500 {b['implied_by_z500_relative']:.2f}, budget residual {b['budget_residual_relative']:.2f} "
                     f"(planet's {b['planet_budget_residual_wind_rms']:.4f} m/s)" if b else ""))
    if args.output is not None:
        args.output.write_text(json.dumps({"analysis": "climate bias anatomy", "config": args.config, "runs": runs}, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
