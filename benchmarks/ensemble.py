"""Ensemble generation: the quickstart ensemble's wall time, its skill and spread, and throughput vs a naive loop.

Uses the config's trained, calibrated checkpoints (``myriad train CONFIG``
first) and its analysis store; writes its stores under
``<run_dir>/ensembles/<name>-bench*.zarr`` (deleted first), so the user's
ensemble is untouched.

1. **Full run**: every init time of the config with the real launcher
   (:mod:`pipeline.ensemble.launch`: one job per init time, ``--nproc``
   torchrun ranks, one thread each), timed from launch to the last unit
   complete, process start-up included.
2. **Skill** of that ensemble (or of an existing store, ``--store``)
   against the analysis, per channel and lead (0 h, 6 h, 1, 2, 3, 5 and
   10 days), averaged over init times with the square root
   after the mean (WeatherBench2): ensemble-mean RMSE
   ``sqrt(mean_t <(mean_m x - y)^2>)``, spread ``sqrt(mean_t <var_m x>)``
   (``ddof=1``), and the spread-skill ratio ``spread sqrt((M+1)/M) / RMSE``;
   ``<.>`` the area-weighted mean (:func:`pipeline.grid.latitude_weights`).
3. **Throughput**, same process, same checkpoints and members (``--pairs``
   pairs per checkpoint, first init time, all lead steps): our generator
   (members batched per work unit, a unit per thread, background writes,
   whole shards with ``--set ensemble.leads_per_shard=L``) against the way the reference system ran (one member at a
   time, batch 1, float32, a synchronous Zarr write after every step into
   one chunk per member and lead, no shards). Both include breeding (the
   naive loop breeds each pair once and runs its two members one after the
   other), model loading and writes; the stores are compared value by value.
   ``--set`` overrides apply to our generator only (the naive loop's store
   keeps one chunk per member and lead without shards). Each thread count
   of ``--threads`` (default: 1, then every core) runs both with that many
   threads: on one thread the comparison is per core.
   Per device (the reference system's unit: one member per device), our
   generator on every core is compared with the naive loop at its fastest
   thread count (:func:`per_device`; intra-op threads can slow a batch of
   one down). The full run's rate is also given per thread against the naive
   one on one thread. With ``--compile`` our generator also runs with
   ``ensemble.compile`` and bf16 autocast: once to compile (timed and
   reported), then timed at each thread count with inductor's cached kernels.
   Every method runs ``--repeats`` times, the methods taking turns, and its
   fastest run counts (the speed of a shared virtual machine drifts by tens
   of percent over minutes).

    OMP_NUM_THREADS=1 python benchmarks/ensemble.py                 # 2 ranks for the full run
    python benchmarks/ensemble.py --skip-full --pairs 2             # throughput only
    python benchmarks/ensemble.py --skip-full --pairs 16 --compile  # + our generator compiled, bf16 autocast
    python benchmarks/ensemble.py --skip-full --pairs 16 --compile --set ensemble.leads_per_shard=41   # make bench
    python benchmarks/ensemble.py --store runs/quickstart/ensembles/quickstart.zarr   # skill of a store, + throughput

Prints tables and writes ``benchmarks/results/ensemble.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from rich.console import Console
from rich.table import Table

from pipeline.config import MyriadConfig, load_config
from pipeline.data.store import open_analysis
from pipeline.ensemble.generator import MemberForecaster, generate_ensemble
from pipeline.ensemble.inputs import CheckpointCache, prepare_inputs
from pipeline.ensemble.launch import plan_ensemble, run_launch
from pipeline.ensemble.store import EnsembleStore
from pipeline.grid import latitude_weights

RESULTS = Path(__file__).resolve().parent / "results" / "ensemble.json"
LEAD_HOURS = (0, 6, 24, 48, 72, 120, 240)
logger = logging.getLogger("benchmarks.ensemble")


def fresh(config: MyriadConfig) -> MyriadConfig:
    """``config`` with its store removed (a benchmark starts from nothing)."""
    shutil.rmtree(config.ensemble.store_path(config.run_dir), ignore_errors=True)
    return config


def full_run(config_path: Path, name: str, nproc: int) -> tuple[Path, float, int]:
    """Generate every init time with the launcher; returns (store, wall seconds, member-steps)."""
    overrides = [f"ensemble.name={name}"]
    config = fresh(load_config(config_path, overrides))
    launches = plan_ensemble(config, config_path, overrides, nproc)
    start = time.perf_counter()
    for launch in launches:
        logger.info("%s", launch.shell_line())
        run_launch(launch, lambda line: logger.debug("%s", line))
    seconds = time.perf_counter() - start
    plan = config.ensemble.plan()
    return config.ensemble.store_path(config.run_dir), seconds, plan.n_members * config.ensemble.n_steps * len(plan.init_times)


def skill(store: Path, analysis_path: Path) -> list[dict]:
    """Ensemble-mean RMSE, spread and spread-skill ratio per channel and lead day (module docstring)."""
    ensemble = xr.open_zarr(store, consolidated=False)
    incomplete = int((ensemble["unit_complete"] == 0).sum())
    if incomplete:
        raise SystemExit(f"{store}: {incomplete} work units are not complete; finish the ensemble first")
    analysis = open_analysis(analysis_path, chunks=None)
    weights = xr.DataArray(latitude_weights(ensemble["latitude"].values), dims="latitude")
    members = ensemble.sizes["member"]
    rows = []
    for name in ensemble.attrs["channels"]:
        for hours in LEAD_HOURS:
            lead = np.timedelta64(hours, "h").astype("timedelta64[ns]")
            if lead not in ensemble["lead_time"].values:
                continue
            forecast = ensemble[name].sel(lead_time=lead).load()
            truth = analysis[name].sel(time=forecast["valid_time"].values).values
            error = (forecast.mean("member") - truth) ** 2
            rmse = float(np.sqrt((error * weights).mean(("latitude", "longitude")).mean("init_time")))
            variance = forecast.var("member", ddof=1)
            spread = float(np.sqrt((variance * weights).mean(("latitude", "longitude")).mean("init_time")))
            rows.append({"channel": name, "lead_hours": hours, "rmse": rmse, "spread": spread,
                         "spread_skill": spread * np.sqrt((members + 1) / members) / rmse if rmse > 0 else float("nan")})
    return rows


def ours(config_path: Path, overrides: list[str]) -> tuple[Path, float, int]:
    """Our generator in this process on the first init time: (store, seconds, member-steps)."""
    config = fresh(load_config(config_path, overrides))
    first = config.ensemble.plan().init_times[0]
    start = time.perf_counter()
    result = generate_ensemble(config, init_times=[first], progress=False)
    return result.store_path, time.perf_counter() - start, result.member_steps


def naive(config_path: Path, overrides: list[str]) -> tuple[Path, float, int]:
    """One member at a time, batch 1, float32, a synchronous write per step: (store, seconds, member-steps)."""
    config = fresh(load_config(config_path, [*overrides, "ensemble.member_block=1"]))
    start = time.perf_counter()
    cache = CheckpointCache("cpu", bf16=False)
    inputs = prepare_inputs(config, cache)
    store = EnsembleStore.create(inputs.store_path, inputs.plan, inputs.output_channels, inputs.grid, inputs.lead_times,
                                 content_key=inputs.content_key, shard_leads=1)
    members = MemberForecaster(inputs, cache)
    index = list(inputs.output_index)
    steps = 0
    plan = inputs.plan
    with torch.inference_mode():
        for first in range(0, plan.n_members, 2):  # one bred pair (+, -) at a time: bred once ...
            pair = plan.members[first : first + 2]
            forecaster = cache.get(inputs.checkpoint_files[pair[0].checkpoint_index])
            unit = plan.unit(0, first)
            initial = members.initial_states(unit.init_time, pair[0].checkpoint_index, pair)
            for row, member in enumerate(pair):  # ... then each member alone, batch 1
                unit = plan.unit(0, member.index)
                state = initial[row : row + 1]
                store.write_lead(unit, 0, state[:, index].numpy())
                step = np.timedelta64(int(forecaster.step_hours * 3600), "s")
                for lead in range(1, inputs.n_steps + 1):
                    state = forecaster.step(state, time=unit.init_time + (lead - 1) * step)
                    store.write_lead(unit, lead, state[:, index].numpy())
                    steps += 1
                store.mark_complete(unit)
    return store.path, time.perf_counter() - start, steps


def max_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two stores' data on the first init time."""
    first, second = xr.open_zarr(a, consolidated=False), xr.open_zarr(b, consolidated=False)
    return max(float(np.abs(first[n].isel(init_time=0) - second[n].isel(init_time=0)).max()) for n in first.attrs["channels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the full run (one thread each)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per checkpoint in the throughput comparison")
    parser.add_argument("--threads", type=int, nargs="+",
                        help="torch threads of the throughput comparison, each compared with the naive loop on as many "
                             "(default: 1 and every core: per core and per device)")
    parser.add_argument("--set", dest="ours_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for our generator's throughput runs only (repeatable), "
                             "e.g. ensemble.leads_per_shard=41")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method and thread count (the fastest counts)")
    parser.add_argument("--compile", action="store_true",
                        help="our generator with ensemble.compile (and bf16 autocast, also on the CPU); the naive loop stays eager float32")
    parser.add_argument("--skip-full", action="store_true", help="no full run (skill only with --store)")
    parser.add_argument("--store", type=Path, help="skill of this finished ensemble store instead of a full run")
    parser.add_argument("--skip-throughput", action="store_true", help="no throughput comparison")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    console = Console()
    config = load_config(args.config)
    base = config.ensemble.name
    plan = config.ensemble.plan()
    result: dict = {"benchmark": "ensemble", "config": str(args.config), "grid": f"{config.grid.nlat}x{config.grid.nlon}",
                    "model": config.model.model_dump(mode="json") if config.model else None,
                    "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

    rows = None
    if args.store is not None:
        rows = skill(args.store, config.analysis_path)
        members = xr.open_zarr(args.store, consolidated=False).sizes["member"]
        result["skill_store"] = str(args.store)
    elif not args.skip_full:
        store, seconds, member_steps = full_run(args.config, f"{base}-bench", args.nproc)
        rows = skill(store, config.analysis_path)
        members = plan.n_members
        result["full_run"] = {"members": plan.n_members, "init_times": len(plan.init_times), "n_steps": config.ensemble.n_steps,
                              "nproc": args.nproc, "seconds": seconds, "member_steps": member_steps,
                              "member_steps_per_s": member_steps / seconds}
        console.print(f"full run: {plan.n_members} members x {config.ensemble.n_steps} steps x {len(plan.init_times)} init times "
                      f"on {args.nproc} ranks: {seconds:.1f} s ({member_steps / seconds:.0f} member-steps/s, start-up included)")
    if rows is not None:
        result["skill"] = rows
        table = Table(title=f"ensemble-mean RMSE and spread vs the analysis ({members} members, {len(plan.init_times)} init times)")
        for column in ("channel", "lead (h)", "ens-mean RMSE", "spread", "spread-skill"):
            table.add_column(column, justify="left" if column == "channel" else "right")
        for row in rows:
            table.add_row(row["channel"], str(row["lead_hours"]), f"{row['rmse']:.4g}", f"{row['spread']:.4g}", f"{row['spread_skill']:.2f}")
        console.print(table)
    if args.skip_throughput:
        write_result(args.output, result, console)
        return

    counts = list(dict.fromkeys(args.threads or [1, os.cpu_count() or 1]))
    result["throughput"] = throughput(args.config, base, args.pairs, counts, args.compile, len(config.ensemble.checkpoints),
                                      args.repeats, args.ours_overrides)
    table = Table(title=f"member-steps/s, same checkpoints and members ({result['throughput']['member_steps']} member-steps); "
                        "each method with the same threads as its naive baseline")
    for column in ("method", "threads", "seconds", "member-steps/s", "vs naive"):
        table.add_column(column, justify="left" if column == "method" else "right")
    methods = {"naive": "naive: 1 member at a time, float32, sync write per step (intra-op threads)",
               "ours": f"myriad generator (batch <= {config.ensemble.member_block}, a unit per thread, background writes"
                       f"{', ' + ' '.join(args.ours_overrides) if args.ours_overrides else ''}), float32",
               "ours_compiled": "the same, compiled, bf16 autocast"}
    for run in result["throughput"]["runs"]:
        for method, rate in run["member_steps_per_s"].items():
            table.add_row(methods[method], str(run["threads"]), f"{run['seconds'][method]:.1f}", f"{rate:.1f}",
                          f"{rate / run['member_steps_per_s']['naive']:.2f}x")
    if "full_run" in result:
        full = result["full_run"]["member_steps_per_s"]
        naive_one = next((r for r in result["throughput"]["runs"] if r["threads"] == 1), None)
        if naive_one is not None:
            per_thread = full / (args.nproc * naive_one["member_steps_per_s"]["naive"])
            result["throughput"]["full_run_ratio_per_thread"] = per_thread
            table.add_row(f"myriad full run, {args.nproc} ranks x 1 thread (start-up included), vs naive on 1 thread x {args.nproc}",
                          str(args.nproc), f"{result['full_run']['seconds']:.1f}", f"{full:.1f}", f"{per_thread:.2f}x")
    console.print(table)
    device = result["throughput"]["per_device"]
    console.print(f"per device ({device['threads']} threads, against the naive loop at its fastest thread count, "
                  f"{device['naive_threads']}): {device['ratio']:.2f}x"
                  + (f", compiled {device['ratio_compiled']:.2f}x" if args.compile else ""))
    if args.compile:
        console.print(f"first compiled run (compilation included): {result['throughput']['first_compiled_run_seconds']:.1f} s")
    for run in result["throughput"]["runs"]:
        console.print(f"{run['threads']} thread(s): largest |ours - naive| over the stored values {run['max_abs_difference']:.3g}"
                      + (f" (compiled bf16: {run['max_abs_difference_compiled']:.3g})" if args.compile else ""))
    write_result(args.output, result, console)


def throughput(config_path: Path, base: str, pairs: int, thread_counts: list[int], compile: bool, n_checkpoints: int,
               repeats: int, ours_overrides: list[str]) -> dict:
    """Naive loop vs our generator (eager, and compiled with bf16 if ``compile``) at each thread count (module docstring).

    Each method runs ``repeats`` times, the methods taking turns, and its
    fastest run counts: the speed of a shared machine drifts over minutes,
    and taking turns exposes every method to the same drift.
    """
    overrides = [f"ensemble.n_pairs={pairs}"]
    mine = [*overrides, *ours_overrides]
    compiled = [*mine, "ensemble.compile=true", "ensemble.bf16=true"]
    methods = {"naive": lambda: naive(config_path, [*overrides, f"ensemble.name={base}-bench-naive"]),
               "ours": lambda: ours(config_path, [*mine, "ensemble.compile=false", f"ensemble.name={base}-bench-ours"])}
    if compile:
        methods["ours_compiled"] = lambda: ours(config_path, [*compiled, f"ensemble.name={base}-bench-compiled"])
    result: dict = {"members": 2 * pairs * n_checkpoints, "target_ratio": 5.0, "repeats": repeats,
                    "ours_overrides": ours_overrides, "runs": []}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        if compile and "first_compiled_run_seconds" not in result:  # compiles; inductor caches its kernels for the timed runs
            _, result["first_compiled_run_seconds"], _ = ours(config_path, [*compiled, f"ensemble.name={base}-bench-compile"])
        times: dict[str, list[float]] = {method: [] for method in methods}
        stores, steps = {}, {}
        for _ in range(repeats):
            for method, run_method in methods.items():
                stores[method], seconds, steps[method] = run_method()
                times[method].append(seconds)
        if len(set(steps.values())) != 1:
            raise SystemExit(f"the methods ran different member-step counts: {steps}")
        member_steps = steps["naive"]
        run: dict = {"threads": threads, "all_seconds": times, "seconds": {m: min(t) for m, t in times.items()}}
        run["member_steps_per_s"] = {m: member_steps / s for m, s in run["seconds"].items()}
        run["ratio"] = run["member_steps_per_s"]["ours"] / run["member_steps_per_s"]["naive"]
        run["max_abs_difference"] = max_difference(stores["ours"], stores["naive"])
        if compile:
            run["ratio_compiled"] = run["member_steps_per_s"]["ours_compiled"] / run["member_steps_per_s"]["naive"]
            run["max_abs_difference_compiled"] = max_difference(stores["ours_compiled"], stores["naive"])
        result["member_steps"] = member_steps
        result["runs"].append(run)
    result["per_device"] = per_device(result["runs"])
    return result


def per_device(runs: list[dict]) -> dict:
    """Our generator on the most threads against the naive loop at whichever thread count made it fastest.

    One member at a time cannot use a device's cores well (its intra-op
    threads can even slow it down), so the per-device baseline is the naive
    loop's best, not its run on every core.
    """
    widest = max(runs, key=lambda run: run["threads"])
    fastest_naive = max(runs, key=lambda run: run["member_steps_per_s"]["naive"])
    naive_rate = fastest_naive["member_steps_per_s"]["naive"]
    device = {"threads": widest["threads"], "naive_threads": fastest_naive["threads"], "naive_member_steps_per_s": naive_rate,
              "ratio": widest["member_steps_per_s"]["ours"] / naive_rate}
    if "ours_compiled" in widest["member_steps_per_s"]:
        device["ratio_compiled"] = widest["member_steps_per_s"]["ours_compiled"] / naive_rate
    return device


def write_result(path: Path, result: dict, console: Console) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
