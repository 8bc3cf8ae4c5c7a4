"""Spherical DYffusion against the SFNO on the quickstart planet: cost, ensemble skill and a long climate run.

Needs both configs trained, and for the skill part both ensembles generated
and scored (``myriad run configs/quickstart.yaml`` and ``myriad run
configs/dyffusion-quickstart.yaml``).

1. **Cost**: network forward passes per emitted step, counted with forward
   hooks on every SFNO network inside each model over a rollout of
   ``--cost-steps`` steps (DYffusion's cold sampler: :math:`(3h-2)/h`; its
   jump sampler and the SFNO: 1), and member-steps/s of the three at the
   same member batch, in the same process and thread count, in alternating
   blocks (the DYffusion members with their own dropout generators, as the
   ensemble generator runs them). ``--no-sfno`` compares the two samplers
   alone (no SFNO checkpoint needed).
2. **Skill** of the two ensembles from their diagnostics stores (global
   region, mean over init times): fair CRPS, spread-skill ratio and
   ensemble-mean RMSE (square root of the mean square over init times) at 1,
   3, 5 and 10 days per channel.
3. **Climate**: ``--years`` of free rollout of ``--members`` stochastic
   members of the DYffusion checkpoint (and the SFNO's, with
   ``--climate-models sfno dyffusion``) from the first validation time.
   Running sums (float64) give, per channel, the time-mean global mean
   :math:`\\overline{\\langle x\\rangle}` and the time-mean zonal mean
   :math:`\\overline{[x]}(\\phi)`, and the global kinetic energy
   :math:`\\langle (u^2+v^2)/2 \\rangle` per year; they are compared with
   the same quantities over every time of the analysis record (the
   planet's own climate): global-mean bias, the area-weighted RMS over
   latitude of the zonal-mean bias (also divided by the planet's
   zonal-mean RMS deviation from its global mean, a scale-free figure), and
   the ratio of time-mean kinetic energies. Where the bias lives: each
   channel's share of the squared zonal-mean bias poleward of 60 degrees,
   and the bias equatorward of 60 over the same contrast. The steady zonal
   mass budget (:mod:`pipeline.data.sources.planet_budget`): the time-mean
   northward geopotential flux :math:`\overline{[z500\,v500]}` against the
   flux that the relaxation of the run's own :math:`\overline{[z500]}`
   implies, both divided by the planet's global-mean geopotential (a wind,
   m/s); the planet's record closes it, a run whose circulation is
   inconsistent with its mass does not. Any non-finite state stops the
   run and is reported. With ``--reference-store``, the analysis store of
   another realisation of the same planet (another ``source.seed``: other
   stirring, same physics), the same table for that record against the
   planet's gives the noise floor: how far an independent stretch of the
   planet's own weather lies from its climate.
4. **Drift**: forecasts of the DYffusion checkpoint from ``--drift-inits``
   evenly spaced validation times (one stochastic member each) to
   ``--drift-lead-hours``; per channel and lead, the mean zonal-mean error
   over the inits and its area-weighted RMS over latitude (also over the
   planet's zonal contrast, the climate table's scale). A bias the
   forecasts reach within weeks is systematic error piling up step by step,
   not a slow instability. It costs about a third of the 10-year run.

``--sampler jump`` runs the climate and drift parts with DYffusion's jump
sampler (one forecaster call per chain, :mod:`models.dyffusion`) instead of
the cold sampler; their JSON entries record which (``dyffusion_sampler``).
``--mass-budget-correction`` enforces the planet's zonal mass budget on every
emitted step of both parts (:mod:`pipeline.ensemble.mass_budget`, the
ensemble's ``mass_budget_correction``); their entries record it with the RMS
of the ``v500`` shifts it made.

    python benchmarks/dyffusion.py                                   # all four, 10 years
    python benchmarks/dyffusion.py --skip-climate --skip-drift       # cost and skill only
    python benchmarks/dyffusion.py --skip-cost --skip-skill --years 1
    myriad ingest configs/dyffusion-climate.yaml --set source.seed=1 --set run_dir=runs/climate-seed1
    python benchmarks/dyffusion.py --dyffusion-config configs/dyffusion-climate.yaml --skip-cost --skip-skill \\
        --reference-store runs/climate-seed1/analysis.zarr                # with the noise floor
    python benchmarks/dyffusion.py --dyffusion-config configs/dyffusion-climate.yaml --skip-cost --skip-skill \\
        --sampler jump --members 1                                        # the jump sampler's climate
    python benchmarks/dyffusion.py --dyffusion-config configs/dyffusion-climate.yaml --skip-cost --skip-skill \\
        --skip-drift --sampler jump --members 2 --mass-budget-correction   # with the planet's mass budget

Prints tables and writes ``benchmarks/results/dyffusion.json`` (parts not
run keep their previous figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from models.dyffusion import SAMPLERS
from models.forcings import EPOCH_2000, YEAR_SECONDS, posix_seconds
from models.sfno import SFNO
from pipeline.config import MyriadConfig, PlanetSourceConfig, load_config
from pipeline.data.sources.planet_budget import balanced_geopotential_flux, equilibrium_zonal_geopotential, mean_seasonal_factor
from pipeline.data.store import open_analysis
from pipeline.ensemble.inputs import resolve_checkpoint
from pipeline.ensemble.mass_budget import MassBudgetCorrection
from pipeline.grid import Grid, latitude_weights
from pipeline.training.forecast import Forecaster

RESULTS = Path(__file__).resolve().parent / "results" / "dyffusion.json"
LEAD_DAYS = (1, 3, 5, 10)
logger = logging.getLogger("benchmarks.dyffusion")


def first_checkpoint(config: MyriadConfig) -> Path:
    return resolve_checkpoint(config.ensemble.checkpoints[0])


def generators(n: int, seed: int) -> list[torch.Generator]:
    """One dropout generator per member (what the ensemble generator gives each member)."""
    return [torch.Generator().manual_seed(seed + k) for k in range(n)]


# ---------------------------------------------------------------------- 1. cost


def count_passes(forecaster: Forecaster, x: torch.Tensor, n_steps: int, time: np.datetime64) -> float:
    """Forward passes of SFNO networks per emitted step over an ``n_steps`` rollout from ``x`` valid at ``time``."""
    calls = [0]
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for m in forecaster.model.modules() if isinstance(m, SFNO)]
    try:
        for _ in forecaster.rollout_normalised(x, n_steps, generators(x.shape[0], 0), time):
            pass
    finally:
        for hook in hooks:
            hook.remove()
    return calls[0] / n_steps


def member_steps_per_second(forecaster: Forecaster, x: torch.Tensor, n_steps: int, valid: np.datetime64) -> float:
    start = time.perf_counter()
    for _ in forecaster.rollout_normalised(x, n_steps, generators(x.shape[0], 1), valid):
        pass
    return x.shape[0] * n_steps / (time.perf_counter() - start)


def cost(models: dict[str, Forecaster], x0: torch.Tensor, valid: np.datetime64, args: argparse.Namespace) -> dict:
    x = x0.expand(args.batch, -1, -1, -1).contiguous()
    passes = {name: count_passes(f, x[:1], args.cost_steps, valid) for name, f in models.items()}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(args.repeats):
        order = list(models) if repeat % 2 == 0 else list(reversed(models))
        for name in order:
            rates[name].append(member_steps_per_second(models[name], x, args.cost_steps, valid))
    median = {name: float(np.median(r)) for name, r in rates.items()}
    against_sfno = {"pass_ratio": passes["dyffusion"] / passes["sfno"],
                    "time_ratio": median["sfno"] / median["dyffusion"]} if "sfno" in models else {}
    return {
        "steps": args.cost_steps,
        "batch": args.batch,
        "passes_per_step": passes,
        "member_steps_per_s": median,
        "member_steps_per_s_all": rates,
        **against_sfno,
        "jump_speedup": median["dyffusion_jump"] / median["dyffusion"],
    }


# ---------------------------------------------------------------------- 2. skill


def skill(config: MyriadConfig) -> dict:
    """Global fair CRPS, SSR and ensemble-mean RMSE at LEAD_DAYS, per channel (mean over init times)."""
    path = config.diagnostics.store_path(config.run_dir)
    ds = xr.open_zarr(path).sel(region="global")
    leads = [np.timedelta64(d * 24, "h") for d in LEAD_DAYS]
    ds = ds.sel(lead_time=leads)
    out: dict[str, dict] = {"store": str(path), "n_members": int(ds.attrs["n_members"]), "lead_days": list(LEAD_DAYS)}
    for channel in ds["channel"].values.tolist():
        c = ds.sel(channel=channel)
        out[channel] = {
            "crps_fair": c["crps_fair"].mean("init_time").values.tolist(),
            "ssr": c["spread_skill_ratio"].mean("init_time").values.tolist(),
            "ensemble_mean_rmse": np.sqrt((c["rmse"] ** 2).mean("init_time")).values.tolist(),
        }
    return out


# ---------------------------------------------------------------------- 3. climate


class ClimateSums:
    r"""Running float64 sums: the time-mean zonal mean of each channel, the global kinetic energy and global means
    (total and per year), the annual harmonic of the hemispheric z500 contrast, and the time-mean zonal mean of
    :math:`z500\,v500` (the northward geopotential flux) with the valid times (for the mass budget).

    The contrast is :math:`H(t) = \langle z500\,\sin\phi \rangle` (area mean; positive when the
    northern hemisphere's layer is deeper, i.e. its summer). The model
    :math:`H(t) \approx a + b\,t + c \cos 2\pi p_y(t) + s \sin 2\pi p_y(t)` (:math:`t` in years,
    :math:`p_y` the year progress of :mod:`models.forcings`) is fitted by least squares from running
    normal equations, so a drifting run's trend does not leak into the harmonic;
    :meth:`seasonal_cycle` gives the amplitude :math:`A = \sqrt{c^2 + s^2}`, the day of the year of
    the northern maximum (:math:`\arg(c + i s)`) and the trend :math:`b`.
    """

    def __init__(self, channels: tuple[str, ...], grid: Grid) -> None:
        self.channels = channels
        self.weights = torch.as_tensor(latitude_weights(grid.latitudes) / grid.nlat, dtype=torch.float64)
        self.hemispheric = self.weights * torch.sin(torch.deg2rad(torch.as_tensor(grid.latitudes, dtype=torch.float64)))
        self.normal_matrix = torch.zeros(4, 4, dtype=torch.float64)
        self.normal_rhs = torch.zeros(4, dtype=torch.float64)
        self.zonal = torch.zeros(len(channels), grid.nlat, dtype=torch.float64)
        self.count = 0
        self.has_wind = "u500" in channels and "v500" in channels
        self.has_flux = "z500" in channels and "v500" in channels
        self.flux = torch.zeros(grid.nlat, dtype=torch.float64)
        self.seconds: list[torch.Tensor] = []
        self.ke_total = 0.0
        self.ke_year: list[float] = []
        self.global_mean_year: list[list[float]] = []
        self._ke_since, self._count_since = 0.0, 0
        self._global_since = torch.zeros(len(channels), dtype=torch.float64)

    def add(self, states: torch.Tensor, seconds: torch.Tensor) -> None:
        """Add ``(N, C, nlat, nlon)`` physical states (members of one time, or times of the record) valid at ``seconds`` ``(N,)``."""
        zonal = states.double().mean(dim=-1)
        self.zonal += zonal.sum(dim=0)
        if "z500" in self.channels:
            contrast = zonal[:, self.channels.index("z500")] @ self.hemispheric
            years = (seconds.double() - EPOCH_2000) / YEAR_SECONDS
            phase = 2 * torch.pi * torch.remainder(years, 1.0)
            basis = torch.stack([torch.ones_like(years), years, torch.cos(phase), torch.sin(phase)], dim=1)
            self.normal_matrix += basis.T @ basis
            self.normal_rhs += basis.T @ contrast
        self._global_since += (zonal @ self.weights).sum(dim=0)
        self.count += states.shape[0]
        self._count_since += states.shape[0]
        self.seconds.append(seconds.double())
        if self.has_flux:
            z = states[:, self.channels.index("z500")].double()
            self.flux += (z * states[:, self.channels.index("v500")].double()).mean(dim=-1).sum(dim=0)
        if self.has_wind:
            u = states[:, self.channels.index("u500")].double()
            v = states[:, self.channels.index("v500")].double()
            ke = float(((0.5 * (u**2 + v**2)).mean(dim=-1) @ self.weights).sum())
            self.ke_total += ke
            self._ke_since += ke

    def close_year(self) -> None:
        """Record the mean kinetic energy since the last call as one year's."""
        if self._count_since:
            self.ke_year.append(self._ke_since / self._count_since)
            self.global_mean_year.append((self._global_since / self._count_since).tolist())
        self._ke_since, self._count_since = 0.0, 0
        self._global_since.zero_()

    def zonal_mean(self) -> np.ndarray:
        return (self.zonal / self.count).numpy()

    def geopotential_flux(self) -> np.ndarray:
        """Time-mean zonal mean of ``z500 v500`` (m3 s-3) by latitude."""
        return (self.flux / self.count).numpy()

    def valid_times(self) -> np.ndarray:
        """Valid times of every added state (datetime64[ns])."""
        return (torch.cat(self.seconds).numpy() * 1e9).round().astype("int64").astype("datetime64[ns]")

    def kinetic_energy(self) -> float:
        return self.ke_total / self.count if self.has_wind and self.count else float("nan")

    def seasonal_cycle(self) -> tuple[float, float, float]:
        """Amplitude (m2 s-2) of the annual harmonic of the hemispheric z500 contrast, its day of the
        northern maximum, and the contrast's linear trend (m2 s-2 per year)."""
        _, trend, c, s = torch.linalg.solve(self.normal_matrix, self.normal_rhs).tolist()
        day = (np.arctan2(s, c) / (2 * np.pi)) % 1.0 * YEAR_SECONDS / 86400.0
        return float(np.hypot(c, s)), float(day), float(trend)


def analysis_climate(store: Path, channels: tuple[str, ...], grid: Grid, steps_per_year: int | None = None) -> ClimateSums:
    """The climate sums of every time of an analysis store (``steps_per_year``: close a year every so many times)."""
    ds = open_analysis(store, chunks=None)
    sums = ClimateSums(channels, grid)
    block_size = steps_per_year or 256
    for start in range(0, ds.sizes["time"], block_size):
        block = ds[list(channels)].isel(time=slice(start, start + block_size)).to_array("channel").transpose("time", "channel", ...)
        sums.add(torch.from_numpy(np.ascontiguousarray(block.values, dtype=np.float32)), posix_seconds(block["time"].values))
        if steps_per_year is not None and block.sizes["time"] == steps_per_year:
            sums.close_year()
    return sums


def climate_run(forecaster: Forecaster, x0: torch.Tensor, valid: np.datetime64, members: int, n_steps: int,
                steps_per_year: int, channels: tuple[str, ...], grid: Grid,
                on_year: Callable[[int, float], None], sampling: bool = True,
                constraint: MassBudgetCorrection | None = None) -> tuple[ClimateSums, bool, int]:
    """Free rollout of ``members`` members from ``x0``; ``sampling``: each member draws its own dropout masks
    (without, the interpolator's dropout is off and the members are identical); ``constraint`` corrects every step."""
    sums = ClimateSums(channels, grid)
    x = x0.expand(members, -1, -1, -1).contiguous()
    finite, done = True, 0
    step_seconds = forecaster.step_hours * 3600.0
    first = float(posix_seconds(valid))
    for state in forecaster.rollout(x, n_steps, generators(members, 7) if sampling else None, time=valid,
                                    constraint=constraint):
        done += 1
        if not torch.isfinite(state).all():
            finite = False
            break
        sums.add(state, torch.full((members,), first + done * step_seconds, dtype=torch.float64))
        if done % steps_per_year == 0:
            sums.close_year()
            on_year(done // steps_per_year, sums.ke_year[-1] if sums.ke_year else float("nan"))
    return sums, finite, done


def zonal_rms(profile: np.ndarray, weights: np.ndarray) -> float:
    r"""Area-weighted RMS over latitude :math:`\sqrt{\langle p^2 \rangle}` of a zonal-mean profile ``(nlat,)``."""
    return float(np.sqrt(np.average(profile**2, weights=weights)))


def zonal_contrast(profile: np.ndarray, weights: np.ndarray) -> float:
    r"""The planet's zonal contrast :math:`\sqrt{\langle (p - \langle p \rangle)^2 \rangle}` of its time-mean zonal mean ``p``."""
    return zonal_rms(profile - np.average(profile, weights=weights), weights)


POLAR_LATITUDE = 60.0
"""Poleward of this latitude (degrees) lies the polar share of a zonal-mean bias."""


def bias_by_latitude_band(bias: np.ndarray, latitudes: np.ndarray, scale: float) -> dict:
    r"""Where a zonal-mean bias profile lives: its share of :math:`\langle b^2 \rangle` (area-weighted) from the
    rows poleward of :data:`POLAR_LATITUDE`, and its area-weighted RMS over the other rows divided by ``scale``."""
    w = latitude_weights(latitudes)
    polar = np.abs(np.asarray(latitudes)) >= POLAR_LATITUDE
    squares = w * bias**2
    total = float(squares.sum())
    return {"polar_share_of_squared_bias": float(squares[polar].sum()) / total if total > 0 else float("nan"),
            "zonal_mean_rms_bias_relative_equatorward_of_60": zonal_rms(bias[~polar], w[~polar]) / scale if scale > 0 else float("nan")}


def mass_budget(sums: ClimateSums, truth: ClimateSums, source: PlanetSourceConfig, latitudes: np.ndarray) -> dict:
    r"""The run's steady zonal mass budget (:mod:`pipeline.data.sources.planet_budget`) in wind units: its time-mean
    geopotential flux :math:`\overline{[z500\,v500]}` and the flux :math:`F_{bal}` that the relaxation of its own
    :math:`\overline{[z500]}` towards the planet's equilibrium implies, both divided by the planet's (``truth``)
    global-mean geopotential; the area-weighted RMS of each and of their difference (the residual, zero for a
    steady record of the planet up to its sampling error)."""
    w = latitude_weights(latitudes)
    planet_geopotential = float(np.average(truth.zonal_mean()[truth.channels.index("z500")], weights=w))
    zonal_geopotential = sums.zonal_mean()[sums.channels.index("z500")]
    equilibrium = equilibrium_zonal_geopotential(latitudes, source, mean_seasonal_factor(sums.valid_times(), source.year_days))
    balanced = balanced_geopotential_flux(zonal_geopotential, equilibrium, latitudes, source.relaxation_days) / planet_geopotential
    flux = sums.geopotential_flux() / planet_geopotential
    return {"flux_wind": flux.tolist(), "balanced_flux_wind": balanced.tolist(), "flux_wind_rms": zonal_rms(flux, w),
            "balanced_flux_wind_rms": zonal_rms(balanced, w), "residual_wind_rms": zonal_rms(flux - balanced, w)}


def bias_table(model: ClimateSums, truth: ClimateSums, grid: Grid, source: PlanetSourceConfig | None = None) -> dict:
    r"""Per channel: area-weighted global means, the zonal-mean RMS bias
    :math:`\sqrt{\langle (\bar x_{model} - \bar x_{planet})^2 \rangle}` over latitude, the same over the planet's
    zonal contrast :math:`\sqrt{\langle (\bar x_{planet} - \langle \bar x_{planet} \rangle)^2 \rangle}`, where it lives
    (:func:`bias_by_latitude_band`) and both time-mean zonal-mean profiles (on ``grid.latitudes``); then the
    seasonal cycle, the kinetic-energy ratios and, for the planet (``source``), the run's mass budget."""
    w = latitude_weights(grid.latitudes)
    m, t = model.zonal_mean(), truth.zonal_mean()
    table = {}
    for k, channel in enumerate(model.channels):
        global_model, global_truth = float(np.average(m[k], weights=w)), float(np.average(t[k], weights=w))
        rms, scale = zonal_rms(m[k] - t[k], w), zonal_contrast(t[k], w)
        table[channel] = {
            "global_mean_model": global_model,
            "global_mean_planet": global_truth,
            "global_mean_bias": global_model - global_truth,
            "zonal_mean_rms_bias": rms,
            "zonal_mean_rms_bias_relative": rms / scale if scale > 0 else float("nan"),
            **bias_by_latitude_band(m[k] - t[k], grid.latitudes, scale),
            "global_mean_per_year": [year[k] for year in model.global_mean_year],
            "zonal_mean_model": m[k].tolist(),
            "zonal_mean_planet": t[k].tolist(),
        }
    if "z500" in model.channels:
        (amplitude, day, trend), (amplitude_planet, day_planet, trend_planet) = model.seasonal_cycle(), truth.seasonal_cycle()
        lag = (day - day_planet + YEAR_SECONDS / 86400.0 / 2) % (YEAR_SECONDS / 86400.0) - YEAR_SECONDS / 86400.0 / 2
        table["seasonal_cycle"] = {"z500_hemispheric_amplitude_model": amplitude, "z500_hemispheric_amplitude_planet": amplitude_planet,
                                   "amplitude_ratio": amplitude / amplitude_planet, "peak_day_of_year_model": day,
                                   "peak_day_of_year_planet": day_planet, "phase_lag_days": lag,
                                   "trend_per_year_model": trend, "trend_per_year_planet": trend_planet}
    if model.has_wind:
        table["kinetic_energy_ratio"] = model.kinetic_energy() / truth.kinetic_energy()
        table["kinetic_energy_per_year_ratio"] = [k / truth.kinetic_energy() for k in model.ke_year]
    if source is not None and model.has_flux:
        table["mass_budget"] = mass_budget(model, truth, source, grid.latitudes)
    return table


KE_RATIO_TOLERANCE = (0.8, 1.25)
"""Stated climate tolerance: time-mean global kinetic energy within -20 % .. +25 % of the planet's ..."""
ZONAL_BIAS_TOLERANCE = 0.25
"""... and every channel's zonal-mean RMS bias below a quarter of the planet's zonal contrast."""


def judge(model: dict) -> dict:
    """Stability verdict of one climate run against the stated tolerances."""
    channels = [k for k, v in model.items() if isinstance(v, dict) and "zonal_mean_rms_bias_relative" in v]
    worst = max(model[c]["zonal_mean_rms_bias_relative"] for c in channels)
    ke = model.get("kinetic_energy_ratio", float("nan"))
    within = bool(KE_RATIO_TOLERANCE[0] <= ke <= KE_RATIO_TOLERANCE[1] and worst < ZONAL_BIAS_TOLERANCE)
    return {"worst_zonal_mean_rms_bias_relative": worst, "within_stated_bias": bool(model["finite"] and within),
            "tolerance": {"kinetic_energy_ratio": list(KE_RATIO_TOLERANCE), "zonal_mean_rms_bias_relative": ZONAL_BIAS_TOLERANCE}}


def budget_correction(config: MyriadConfig, forecaster: Forecaster, args: argparse.Namespace) -> MassBudgetCorrection | None:
    """The planet's mass-budget correction of ``forecaster``'s steps when ``--mass-budget-correction`` is given."""
    if not args.mass_budget_correction:
        return None
    if not isinstance(config.source, PlanetSourceConfig):
        raise SystemExit(f"--mass-budget-correction: the mass budget is the planet's; {config.source.kind} is not")
    return MassBudgetCorrection.for_checkpoint(config.source, forecaster.info)


def correction_record(correction: MassBudgetCorrection | None) -> dict:
    """JSON entries of a corrected run: the flag and the RMS of its ``v500`` shifts (m/s)."""
    return {} if correction is None else {"mass_budget_correction": True, "v500_shift_rms": correction.shift_rms}


def climate(configs: dict[str, MyriadConfig], models: dict[str, Forecaster], args: argparse.Namespace) -> dict:
    config = configs["dyffusion"]
    info = models["dyffusion"].info
    channels, grid, step_hours = info.channels, info.grid, info.time_step_hours
    steps_per_year = round(365.25 * 24 / step_hours)
    n_steps = round(args.years * steps_per_year)
    truth = analysis_climate(config.analysis_path, channels, grid)
    source = config.source if isinstance(config.source, PlanetSourceConfig) else None
    interpolator = models["dyffusion"].model.interpolator
    if args.no_sampling_dropout and interpolator is not None:
        interpolator.set_mc_dropout(False)
    analysis = open_analysis(config.analysis_path, chunks=None)
    start = np.datetime64(config.training.val_period.start, "ns")
    x0 = torch.from_numpy(np.stack([analysis[c].sel(time=start).values for c in channels]).astype(np.float32))[None]
    out: dict = {"years": args.years, "steps": n_steps, "members": args.members, "init_time": str(start)[:16],
                 "sampling_dropout": not args.no_sampling_dropout,
                 "planet_record": [str(analysis.time.values[0])[:10], str(analysis.time.values[-1])[:10]],
                 "planet_kinetic_energy": truth.kinetic_energy(), "latitudes": [float(v) for v in grid.latitudes]}
    if source is not None and truth.has_flux:
        out["planet_mass_budget"] = mass_budget(truth, truth, source, grid.latitudes)
    if args.reference_store is not None:
        reference = analysis_climate(args.reference_store, channels, grid, steps_per_year)
        times = open_analysis(args.reference_store, chunks=None).time.values
        out["noise_floor"] = {"store": str(args.reference_store), "record": [str(times[0])[:10], str(times[-1])[:10]],
                              "finite": True, **bias_table(reference, truth, grid, source)}
        out["noise_floor"].update(judge(out["noise_floor"]))
    for name in args.climate_models:
        clock = time.perf_counter()
        correction = budget_correction(config, models[name], args)
        sums, finite, done = climate_run(models[name], x0, start, args.members, n_steps, steps_per_year, channels, grid,
                                         lambda year, ke, name=name: logger.info("%s: year %d, KE %.4g", name, year, ke),
                                         sampling=not args.no_sampling_dropout, constraint=correction)
        out[name] = {"finite": finite, "steps_done": done, "seconds": time.perf_counter() - clock,
                     **correction_record(correction), **bias_table(sums, truth, grid, source)}
        out[name].update(judge(out[name]))
    return out


# ---------------------------------------------------------------------- 4. drift


def drift(config: MyriadConfig, forecaster: Forecaster, args: argparse.Namespace) -> dict:
    r"""Mean zonal-mean forecast error by lead over evenly spaced validation inits (module docstring, part 4).

    For inits :math:`t_i`, :math:`i = 1..N`, and lead :math:`\ell`: :math:`\bar e_\ell(\phi) = \frac1N
    \sum_i ([\hat x_i(t_i + \ell)] - [x(t_i + \ell)])(\phi)`, :math:`[\cdot]` the zonal mean, each init one
    member with its own dropout generator (seed ``1000 + i``); reported with its area-weighted RMS over latitude
    and that RMS over the planet's zonal contrast (its time-mean zonal mean over the whole record). Its
    sampling noise: the standard error :math:`s_\ell(\phi) / \sqrt N` of the mean (:math:`s_\ell` the spread of
    the inits' zonal-mean errors; inits days apart taken as independent), reported as its area-weighted RMS
    over latitude."""
    info = forecaster.info
    channels, grid, step_hours = info.channels, info.grid, info.time_step_hours
    leads = [round(hours / step_hours) for hours in args.drift_lead_hours]
    if args.drift_inits < 1:
        raise SystemExit("--drift-inits must be at least 1")
    if min(leads) < 1 or any(lead * step_hours != hours for lead, hours in zip(leads, args.drift_lead_hours)):
        raise SystemExit(f"--drift-lead-hours must be positive multiples of the model's {step_hours} h step")
    period = config.training.val_period
    analysis = open_analysis(config.analysis_path, chunks=None)
    record = analysis.sel(time=slice(np.datetime64(period.start, "ns"), np.datetime64(period.end, "ns")))
    values = np.stack([record[c].values for c in channels], axis=1).astype(np.float32)  # (time, channel, lat, lon)
    last_init = values.shape[0] - 1 - max(leads)
    if last_init < 0:
        raise SystemExit(f"the validation period holds {values.shape[0]} times, fewer than the longest drift lead")
    inits = np.unique(np.linspace(0, last_init, args.drift_inits).round().astype(int))
    errors = np.zeros((len(leads), len(channels), grid.nlat))
    squares = np.zeros_like(errors)
    correction = budget_correction(config, forecaster, args)
    for first in range(0, len(inits), args.batch):
        rows = inits[first:first + args.batch]
        states = forecaster.rollout(torch.from_numpy(values[rows]), max(leads), generators(len(rows), 1000 + first),
                                    time=record.time.values[rows], constraint=correction)
        for step, state in enumerate(states, start=1):
            if step in leads:
                error = state.double().mean(dim=-1).numpy() - values[rows + step].mean(axis=-1)  # (batch, channel, lat)
                errors[leads.index(step)] += error.sum(axis=0)
                squares[leads.index(step)] += (error**2).sum(axis=0)
    errors /= len(inits)
    standard_error = np.sqrt(np.maximum(squares / len(inits) - errors**2, 0.0) / max(len(inits) - 1, 1))
    w = latitude_weights(grid.latitudes)
    planet = analysis_climate(config.analysis_path, channels, grid).zonal_mean()
    out: dict = {"lead_hours": list(args.drift_lead_hours), "inits": len(inits), "members_per_init": 1,
                 "period": [str(record.time.values[inits[0]])[:16], str(record.time.values[inits[-1]])[:16]],
                 **correction_record(correction)}
    for k, channel in enumerate(channels):
        rms = [zonal_rms(errors[j, k], w) for j in range(len(leads))]
        scale = zonal_contrast(planet[k], w)
        out[channel] = {"zonal_mean_rms_bias": rms,
                        "zonal_mean_rms_bias_relative": [r / scale if scale > 0 else float("nan") for r in rms],
                        "zonal_mean_rms_standard_error": [zonal_rms(standard_error[j, k], w) for j in range(len(leads))],
                        "zonal_mean_bias": errors[:, k].tolist()}
    return out


# ---------------------------------------------------------------------- report


def print_mass_budget(title: str, budget: dict) -> None:
    print(f"{title}: geopotential flux / the planet's mean geopotential {budget['flux_wind_rms']:.3g} m/s RMS, "
          f"balancing its relaxation {budget['balanced_flux_wind_rms']:.3g}, residual {budget['residual_wind_rms']:.3g}")


def print_report(result: dict) -> None:
    if "cost" in result:
        c = result["cost"]
        if "time_ratio" in c:
            print(f"passes per emitted step: SFNO {c['passes_per_step']['sfno']:.3g}, DYffusion {c['passes_per_step']['dyffusion']:.3g} "
                  f"({c['pass_ratio']:.2f}x); member-steps/s at batch {c['batch']}: SFNO {c['member_steps_per_s']['sfno']:.1f}, "
                  f"DYffusion {c['member_steps_per_s']['dyffusion']:.1f} ({c['time_ratio']:.2f}x the time)")
        if "jump_speedup" in c:
            print(f"DYffusion's jump sampler: {c['passes_per_step']['dyffusion_jump']:.3g} passes per step, "
                  f"{c['member_steps_per_s']['dyffusion_jump']:.1f} member-steps/s ({c['jump_speedup']:.2f}x the cold sampler's)")
    if "skill" in result:
        s = result["skill"]
        print(f"{'channel':<8} {'model':<10} " + " ".join(f"{f'{d} d CRPS/SSR/RMSE':>24}" for d in LEAD_DAYS))
        for channel in [k for k in s["sfno"] if isinstance(s["sfno"][k], dict)]:
            for name in ("sfno", "dyffusion"):
                v = s[name][channel]
                print(f"{channel:<8} {name:<10} " + " ".join(
                    f"{v['crps_fair'][i]:>9.3g}/{v['ssr'][i]:.2f}/{v['ensemble_mean_rmse'][i]:<9.3g}" for i in range(len(LEAD_DAYS))))
    if "climate" in result:
        c = result["climate"]
        if "planet_mass_budget" in c:
            print_mass_budget("the planet's steady zonal mass budget", c["planet_mass_budget"])
        for name in [k for k in c if isinstance(c[k], dict) and "finite" in c[k]]:
            v = c[name]
            run = (f"another realisation of the planet, {v['record'][0]} to {v['record'][1]}" if name == "noise_floor"
                   else f"{c['years']} years, finite {v['finite']} ({v['steps_done']} steps, {v['seconds']:.0f} s)"
                   + (f", {c['dyffusion_sampler']} sampler" if name == "dyffusion" and "dyffusion_sampler" in c else ""))
            print(f"{name}: {run}, KE ratio {v.get('kinetic_energy_ratio', float('nan')):.3g}, within the stated bias: {v['within_stated_bias']}")
            if v.get("mass_budget_correction"):
                print(f"  mass budget enforced on every step: v500 shifted by {v['v500_shift_rms']:.3g} m/s RMS")
            for channel in result.get("channels", []):
                b = v[channel]
                print(f"  {channel:<8} global mean {b['global_mean_model']:.5g} vs {b['global_mean_planet']:.5g} "
                      f"(bias {b['global_mean_bias']:+.3g}); zonal-mean RMS bias {b['zonal_mean_rms_bias']:.3g} "
                      f"({b['zonal_mean_rms_bias_relative']:.2f} of the planet's zonal contrast; "
                      f"{b['polar_share_of_squared_bias']:.0%} of its square poleward of {POLAR_LATITUDE:.0f}, "
                      f"{b['zonal_mean_rms_bias_relative_equatorward_of_60']:.2f} equatorward)")
            if "mass_budget" in v:
                print_mass_budget("  steady zonal mass budget", v["mass_budget"])
            if "seasonal_cycle" in v:
                sc = v["seasonal_cycle"]
                print(f"  seasonal cycle of the hemispheric z500 contrast: amplitude {sc['amplitude_ratio']:.2f}x the planet's, "
                      f"northern maximum {sc['phase_lag_days']:+.0f} days from the planet's (day {sc['peak_day_of_year_planet']:.0f}), "
                      f"trend {sc['trend_per_year_model']:+.0f} m2 s-2 per year (planet {sc['trend_per_year_planet']:+.0f})")
    if "drift" in result:
        d = result["drift"]
        print(f"drift: zonal-mean RMS bias / the planet's zonal contrast by lead "
              f"({d['inits']} inits, {d['period'][0]} to {d['period'][1]}, {d.get('dyffusion_sampler', 'cold')} sampler"
              + (", mass budget enforced" if d.get("mass_budget_correction") else "") + ")")
        print(f"  {'channel':<8} " + " ".join(f"{f'{h} h':>8}" for h in d["lead_hours"]))
        for channel in result.get("channels", []):
            print(f"  {channel:<8} " + " ".join(f"{r:>8.3f}" for r in d[channel]["zonal_mean_rms_bias_relative"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sfno-config", default="configs/quickstart.yaml")
    parser.add_argument("--dyffusion-config", default="configs/dyffusion-quickstart.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="members per batch in the cost measurement")
    parser.add_argument("--cost-steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--years", type=float, default=10.0)
    parser.add_argument("--members", type=int, default=1, help="stochastic members of the climate run")
    parser.add_argument("--climate-models", nargs="+", default=["dyffusion"], choices=["sfno", "dyffusion"])
    parser.add_argument("--no-sampling-dropout", action="store_true",
                        help="climate run with the interpolator's dropout off: deterministic DYffusion members")
    parser.add_argument("--sampler", choices=SAMPLERS, default="cold",
                        help="DYffusion's sampler: the paper's cold sampling, or one forecaster jump per chain")
    parser.add_argument("--mass-budget-correction", action="store_true",
                        help="enforce the planet's zonal mass budget on every step of the climate and drift runs")
    parser.add_argument("--no-sfno", action="store_true",
                        help="cost part without the SFNO: DYffusion's cold and jump samplers only")
    parser.add_argument("--reference-store", type=Path, default=None,
                        help="analysis.zarr of the same planet with another source.seed: the climate's noise floor")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-skill", action="store_true")
    parser.add_argument("--skip-climate", action="store_true")
    parser.add_argument("--skip-drift", action="store_true")
    parser.add_argument("--drift-inits", type=int, default=96, help="validation init times of the drift part")
    parser.add_argument("--drift-lead-hours", type=int, nargs="+", default=[6, 36, 72, 144, 240, 480])
    parser.add_argument("--output", type=Path, default=RESULTS, help="results JSON (updated in place when it exists)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    configs = {"sfno": load_config(args.sfno_config), "dyffusion": load_config(args.dyffusion_config)}
    # the cost compares both networks; the climate run needs DYffusion (its grid and start) and --climate-models
    needed = ({"dyffusion"} | (set() if args.skip_climate else set(args.climate_models))
              | (set() if args.skip_cost or args.no_sfno else {"sfno"}))
    models = {name: Forecaster.from_checkpoint(first_checkpoint(configs[name]), bf16=False, dyffusion_sampler=args.sampler)
              for name in sorted(needed)}
    result = json.loads(args.output.read_text()) if args.output.is_file() else {}
    loaded = {name: str(f.info.path) for name, f in models.items()}  # a partial run keeps the other model's entry
    result.update({"benchmark": "Spherical DYffusion vs SFNO on the quickstart planet", "threads": args.threads,
                   "device": f"cpu ({platform.machine()})", "torch": str(torch.__version__),
                   "checkpoints": {**result.get("checkpoints", {}), **loaded},
                   "channels": list(models["dyffusion"].info.channels)})
    with torch.inference_mode():
        if not args.skip_cost:
            analysis = open_analysis(configs["dyffusion"].analysis_path, chunks=None)
            info = models["dyffusion"].info
            x0 = np.stack([analysis[c].isel(time=-1).values for c in info.channels]).astype(np.float32)
            z0 = info.normalisation.normalise(torch.from_numpy(x0)[None])
            samplers = {kind: Forecaster.from_checkpoint(first_checkpoint(configs["dyffusion"]), bf16=False,
                                                         dyffusion_sampler=kind) for kind in SAMPLERS}
            timed = {**({"sfno": models["sfno"]} if "sfno" in models else {}),
                     "dyffusion": samplers["cold"], "dyffusion_jump": samplers["jump"]}
            result["cost"] = cost(timed, z0, analysis["time"].values[-1], args)
        if not args.skip_skill:
            result["skill"] = {name: skill(c) for name, c in configs.items()}
        if not args.skip_climate:
            result["climate"] = climate(configs, models, args)
        if not args.skip_drift:
            result["drift"] = drift(configs["dyffusion"], models["dyffusion"], args)
    for part, skipped in (("climate", args.skip_climate), ("drift", args.skip_drift)):
        if not skipped:
            result[part]["dyffusion_sampler"] = args.sampler
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
