"""The ``myriad`` command line (typer + rich).

Every command that runs a stage takes a CONFIG file plus repeatable
``--set section.key=value`` overrides, validates the config before any work,
and runs the stage through its Prefect flow so that every run shows up in
Prefect. Errors a user can cause print one message and exit with status 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from pipeline.config import MyriadConfig, load_config
from pipeline.errors import MyriadError
from pipeline.logs import configure_logging

# Our library loggers also go to the Prefect API (visible in the UI per run).
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
# A temporary Prefect server would try to send telemetry (and log an error offline).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="myriad",
    help="Myriad: weather and climate ensembles from reanalysis to diagnostics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # paths and snippets stay copy-pasteable

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML), e.g. configs/quickstart.yaml.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set time.end=2001-01-01 (repeatable)."),
]

F = TypeVar("F", bound=Callable[..., Any])


class _DropUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed task with its traceback; for our user errors the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MyriadError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_error_tracebacks() -> None:
    user_filter = _DropUserErrorTracebacks()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(user_filter)


def user_errors(func: F) -> F:
    """Turn MyriadError into one red line on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MyriadError as exc:
            console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _load(config: Path, overrides: list[str] | None) -> MyriadConfig:
    return load_config(config, overrides or [])


def _prefect_ready() -> None:
    """Import Prefect (which sets up its logging), then silence user-error tracebacks."""
    import prefect  # noqa: F401

    _quiet_user_error_tracebacks()
    if not os.environ.get("PREFECT_API_URL"):
        console.print(
            "[dim]No PREFECT_API_URL set: Prefect starts a temporary local server for this run "
            "(about 15 s). Start `prefect server start` and export PREFECT_API_URL to keep runs.[/dim]"
        )


@app.command()
@user_errors
def ingest(config: ConfigArg, set_: SetOpt = None) -> None:
    """Ingest the configured source into <run_dir>/analysis.zarr, then compute stats.nc."""
    _load(config, set_)
    _prefect_ready()
    from flows.ingest import ingest_flow

    outputs = ingest_flow(str(config), set_ or [])
    console.print(f"analysis store: {outputs['analysis']}\nstatistics:     {outputs['statistics']}")


@app.command()
@user_errors
def stats(config: ConfigArg, set_: SetOpt = None) -> None:
    """(Re)compute <run_dir>/stats.nc from a complete analysis store."""
    _load(config, set_)
    _prefect_ready()
    from flows.ingest import statistics_flow

    outputs = statistics_flow(str(config), set_ or [])
    console.print(f"statistics: {outputs['statistics']}")


@app.command()
@user_errors
def run(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run the whole pipeline on CONFIG (the main job); prints where the outputs are."""
    cfg = _load(config, set_)
    _prefect_ready()
    from flows.end_to_end import end_to_end_flow

    outputs = end_to_end_flow(str(config), set_ or [])
    console.print("[bold green]done.[/bold green] Outputs:")
    for stage, path in outputs.items():
        console.print(f"  {stage:<12} {path}", highlight=False)
    console.print("Open them with xarray:", highlight=False)
    console.print(_open_snippet(cfg, outputs), highlight=False)


def _open_snippet(cfg: MyriadConfig, outputs: dict[str, str]) -> str:
    """Lines of Python that open the run's stores."""
    lines = ["  import xarray as xr", f'  analysis = xr.open_zarr("{cfg.analysis_path}")',
             f'  stats = xr.open_dataset("{cfg.stats_path}")']
    if "ensemble" in outputs:
        lines.append(f'  ensemble = xr.open_zarr("{outputs["ensemble"]}")')
    if "diagnostics" in outputs:
        lines.append(f'  diagnostics = xr.open_zarr("{outputs["diagnostics"]}")')
    return "\n".join(lines)


@app.command()
@user_errors
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Ranks per seed (default training.nproc_per_node).")] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Train only this seed of training.seeds (repeatable).")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="DYffusion: train only this stage (interpolator or forecaster); default both, in order.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the torchrun command lines and exit.")] = False,
) -> None:
    """Train the configured model, one checkpoint per seed (torchrun), then calibrate each."""
    cfg = _load(config, set_)
    from pipeline.training.dyffusion import checked_stage, stages_to_train
    from pipeline.training.launch import plan_training

    stages = [checked_stage(cfg, stage)] if stage else stages_to_train(cfg)
    if dry_run:
        for step, name in enumerate(stages):  # later stages need the earlier ones' checkpoints: not checked here
            for plan in plan_training(cfg, config, set_ or [], nproc, seed, name, check_interpolators=step == 0):
                typer.echo(plan.shell_line())
        return
    plan_training(cfg, config, set_ or [], nproc, seed, stages[0])  # refuse bad input before Prefect starts
    _prefect_ready()
    from flows.train import train_flow

    outputs = train_flow(str(config), set_ or [], nproc, seed, stage)
    console.print("checkpoints:")
    for name, directory in outputs.items():
        console.print(f"  {name:<8} {directory}", highlight=False)


@app.command()
@user_errors
def ensemble(
    config: ConfigArg,
    set_: SetOpt = None,
    init: Annotated[list[str] | None, typer.Option("--init", help="Only this init time of ensemble.init_times (repeatable).")] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Ranks per init time (torchrun when > 1).")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command lines (one per init time) and exit.")] = False,
) -> None:
    """Generate the configured bred-vector ensemble into <run_dir>/ensembles/<name>.zarr."""
    cfg = _load(config, set_)
    from pipeline.ensemble.launch import plan_ensemble

    launches = plan_ensemble(cfg, config, set_ or [], nproc, init)
    if dry_run:
        for launch in launches:
            typer.echo(launch.shell_line())
        return
    _prefect_ready()
    from flows.ensemble import ensemble_flow

    outputs = ensemble_flow(str(config), set_ or [], init, nproc)
    console.print(f"ensemble store: {outputs['ensemble']}", highlight=False)
    console.print(f'Open it with xarray:\n  import xarray as xr\n  ens = xr.open_zarr("{outputs["ensemble"]}")', highlight=False)


@app.command()
@user_errors
def diagnose(config: ConfigArg, set_: SetOpt = None) -> None:
    """Verify the ensemble: scores, spectra and extremes into <run_dir>/diagnostics/<name>.zarr, plus a report."""
    cfg = _load(config, set_)
    from pipeline.diagnostics.run import open_inputs

    open_inputs(cfg)  # fail fast: opens the stores and checks channels / times (metadata only)
    _prefect_ready()
    from flows.diagnose import run_diagnose_flow

    outputs = run_diagnose_flow(cfg, str(config), set_ or [])
    console.print(f"diagnostics store: {outputs['diagnostics']}", highlight=False)
    if "report" in outputs:
        console.print(f"report:            {outputs['report']}", highlight=False)
    console.print(f'Open it with xarray:\n  import xarray as xr\n  diag = xr.open_zarr("{outputs["diagnostics"]}")',
                  highlight=False)


@app.command()
@user_errors
def export(
    config: ConfigArg,
    set_: SetOpt = None,
    format_: Annotated[str, typer.Option("--format", help="Output layout: weatherbench2.")] = "weatherbench2",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output Zarr (default <run_dir>/exports/<ensemble>-weatherbench2.zarr).")] = None,
) -> None:
    """Export the ensemble store in another layout (WeatherBench2: time, prediction_timedelta, number)."""
    cfg = _load(config, set_)
    from pipeline.diagnostics.export import export as export_store

    path = export_store(cfg, format_, output)
    console.print(f"exported: {path}", highlight=False)


@app.command()
@user_errors
def inspect(path: Annotated[Path, typer.Argument(help="A Myriad store (analysis.zarr) or stats.nc.")]) -> None:
    """Summarise a store: channels, grid, time span and step, completeness, statistics."""
    from pipeline.data.inspect import render_summary

    Console().print(render_summary(path))


def main() -> None:
    """Console-script entry point."""
    configure_logging()
    app()


if __name__ == "__main__":
    main()
