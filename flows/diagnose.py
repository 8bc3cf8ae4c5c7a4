"""Prefect flow: ensemble store -> diagnostics store -> report, with the headline numbers as artifacts.

Thin: the ``diagnose`` task calls :func:`pipeline.diagnostics.run.diagnose`,
the ``report`` task :func:`pipeline.diagnostics.report.report`. Both cache on
:func:`pipeline.fingerprints.diagnostics_key` (the diagnostics, ensemble,
statistics and ingest sections, the ensemble store's identity and completion
record, the output path) and are refreshed when their output is missing or
was made under another key, so an unchanged rerun skips both. The flow then
publishes a table artifact (global scores per channel and lead time) and a
markdown artifact (where the outputs are, the key numbers at the longest
lead).
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pipeline.config import MyriadConfig, load_config
from pipeline.dask_cluster import cluster_spec
from pipeline.logs import configure_logging
from pipeline.diagnostics.config import DiagnosticsConfig
from pipeline.fingerprints import diagnostics_key, diagnostics_ready


def _diagnose_key(context: object, parameters: dict) -> str:
    return diagnostics_key(parameters["config"])


def _report_key(context: object, parameters: dict) -> str:
    return "report-" + diagnostics_key(parameters["config"])


@task(name="diagnose", cache_key_fn=_diagnose_key, persist_result=True)
def diagnose_task(config: MyriadConfig) -> str:
    """Write the diagnostics store; skipped when it is up to date."""
    from pipeline.diagnostics.run import diagnose

    configure_logging()  # on a Dask worker process our loggers are not set up yet

    return str(diagnose(config))


@task(name="report", cache_key_fn=_report_key, persist_result=True)
def report_task(config: MyriadConfig, store: str) -> str:
    """Write the figures and index.html; skipped when up to date."""
    from pipeline.diagnostics.report import report

    return str(report(config))


def _artifact_key(name: str) -> str:
    return "myriad-diagnostics-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def publish_artifacts(config: MyriadConfig, store: str, index: str | None) -> list[dict]:
    """Table + markdown Prefect artifacts with the headline numbers; returns the table rows."""
    from pipeline.diagnostics.report import headline_rows
    from pipeline.diagnostics.run import open_diagnostics, summarise

    settings = config.diagnostics or DiagnosticsConfig()
    summary = summarise(open_diagnostics(store))
    rows = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in headline_rows(summary)]
    key = _artifact_key(settings.name)
    create_table_artifact(table=rows, key=key,
                          description=f"Myriad diagnostics '{settings.name}': global scores, mean over init times")
    longest = max(r["lead_hours"] for r in rows)
    lines = [f"# Myriad diagnostics `{settings.name}`", "", f"- store: `{store}`"]
    if index:
        lines.append(f"- report: `{index}`")
    lines += ["", f"Global scores at the longest lead ({longest:g} h), {summary.attrs.get('n_members')} members:", "",
              "| channel | RMSE | spread | SSR | fair CRPS | outliers |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["lead_hours"] == longest:
            lines.append(f"| {r['channel']} | {r.get('rmse', float('nan')):.4g} | {r.get('spread', float('nan')):.4g} | "
                         f"{r.get('spread_skill_ratio', float('nan')):.3f} | {r.get('crps_fair', float('nan')):.4g} | "
                         f"{r.get('outlier_fraction', float('nan')):.3f} |")
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary",
                             description=f"Myriad diagnostics '{settings.name}': where the outputs are")
    return rows


def diagnostics_task_runner(config: MyriadConfig) -> TaskRunner:
    """Prefect's ``DaskTaskRunner`` on the cluster of ``config.dask`` (LocalCluster, or SLURMCluster
    scaled adaptively up to ``dask.n_workers``); a thread pool for ``dask.cluster: threads``."""
    if config.dask.cluster == "threads":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    cluster_class, cluster_kwargs = cluster_spec(config.dask)
    adapt = {"minimum": 1, "maximum": config.dask.n_workers} if config.dask.cluster == "slurm" else None
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=cluster_kwargs, adapt_kwargs=adapt)


def run_diagnose(config: MyriadConfig) -> dict[str, str]:
    """Run the diagnose and report tasks inside the current flow; returns the output paths.

    The diagnose task is submitted to the flow's task runner: under
    :func:`diagnostics_task_runner`'s ``DaskTaskRunner`` it runs on a worker
    of that cluster and computes its graph there (:func:`pipeline.dask_cluster.dask_client`).
    """
    from pipeline.diagnostics.report import report_ready

    settings = config.diagnostics or DiagnosticsConfig()
    store = diagnose_task.with_options(refresh_cache=not diagnostics_ready(config)).submit(config).result()
    outputs = {"diagnostics": store}
    index = None
    if settings.figures:
        fresh = report_ready(config, diagnostics_key(config))
        index = report_task.with_options(refresh_cache=not fresh)(config, store)
        outputs["report"] = index
    publish_artifacts(config, store, index)
    get_run_logger().info("diagnostics: %s", ", ".join(f"{k} {v}" for k, v in outputs.items()))
    return outputs


def run_diagnose_flow(config: MyriadConfig, config_path: str, overrides: list[str] | None = None) -> dict[str, str]:
    """:func:`diagnose_flow` on the task runner of ``config.dask`` (standalone or as a subflow)."""
    return diagnose_flow.with_options(task_runner=diagnostics_task_runner(config))(config_path, overrides or [])


@flow(name="myriad-diagnose", log_prints=False)
def diagnose_flow(config_path: str, overrides: list[str] | None = None) -> dict[str, str]:
    """Diagnose the configured ensemble; returns ``{"diagnostics": store, "report": index.html}``."""
    config = load_config(Path(config_path), overrides or [])
    return run_diagnose(config)
