"""Open the configured Dask cluster (``config.dask``) for ingest and diagnostics.

Three kinds:

* ``threads``: Dask's threaded scheduler in this process with ``n_workers``
  threads; no client (``dask.compute`` uses it inside the context);
* ``local``: a ``distributed.LocalCluster`` of ``n_workers`` processes with
  ``threads_per_worker`` threads and ``memory_limit`` each;
* ``slurm``: a ``dask_jobqueue.SLURMCluster(**config.slurm)`` scaled to
  ``n_workers`` workers (jobs are submitted with ``sbatch``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

from pipeline.config import DaskConfig
from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)


def cluster_spec(config: DaskConfig) -> tuple[str, dict[str, Any]]:
    """``(cluster class path, keyword arguments)`` of a ``local`` or ``slurm`` cluster.

    The same spec builds the cluster here and Prefect's ``DaskTaskRunner``
    (flows/diagnose.py), so both honour ``config.dask``.

    Raises
    ------
    MyriadError
        For ``threads``, which has no distributed cluster.
    """
    if config.cluster == "local":
        return "distributed.LocalCluster", {
            "n_workers": config.n_workers, "threads_per_worker": config.threads_per_worker,
            "memory_limit": config.memory_limit, "processes": True, "dashboard_address": ":0",
        }
    if config.cluster == "slurm":
        return "dask_jobqueue.SLURMCluster", dict(config.slurm)
    raise MyriadError(f"dask.cluster '{config.cluster}' has no distributed cluster")


def build_cluster(config: DaskConfig) -> Any:
    """The ``distributed`` cluster object for ``local`` or ``slurm`` (not started for ``threads``).

    Raises
    ------
    MyriadError
        For ``threads`` (which has no cluster) or bad ``dask.slurm`` keywords.
    """
    path, kwargs = cluster_spec(config)
    module, name = path.rsplit(".", 1)
    cluster_class = getattr(importlib.import_module(module), name)
    try:
        return cluster_class(**kwargs)
    except (TypeError, ValueError) as exc:
        raise MyriadError(f"config dask.{'slurm' if config.cluster == 'slurm' else 'cluster'}: {exc}") from None


@contextmanager
def dask_client(config: DaskConfig) -> Iterator[Any]:
    """Context with the configured scheduler active; yields a ``distributed.Client`` or None.

    Inside the context ``dask.compute`` and ``.compute()`` run on the
    configured cluster. ``threads`` yields None; the others yield the client,
    and the cluster is closed on exit. Called from a task that already runs
    on a Dask worker (a Prefect flow with ``DaskTaskRunner``), it uses that
    cluster instead of starting one: the task secedes from the worker's
    thread pool while its graph runs, so every worker thread computes.
    """
    if _on_dask_worker():
        from distributed import worker_client

        with worker_client() as client, dask.config.set(scheduler=client.get):
            logger.info("dask: the task runner's cluster (%s)", client.scheduler.address)
            yield client
        return
    if config.cluster == "threads":
        with dask.config.set(scheduler="threads", num_workers=config.n_workers):
            yield None
        return
    from distributed import Client

    cluster = build_cluster(config)
    try:
        if config.cluster == "slurm":
            cluster.scale(n=config.n_workers)
        with Client(cluster) as client:
            logger.info("dask %s cluster: %s", config.cluster, client.dashboard_link)
            yield client
    finally:
        cluster.close()


def _on_dask_worker() -> bool:
    """True inside a task running on a ``distributed`` worker."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True
