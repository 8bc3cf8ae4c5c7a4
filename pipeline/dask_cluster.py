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

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

from pipeline.config import DaskConfig
from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)


def build_cluster(config: DaskConfig) -> Any:
    """The ``distributed`` cluster object for ``local`` or ``slurm`` (not started for ``threads``).

    Raises
    ------
    MyriadError
        For ``threads`` (which has no cluster) or bad ``dask.slurm`` keywords.
    """
    if config.cluster == "local":
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            memory_limit=config.memory_limit,
            processes=True,
            dashboard_address=":0",
        )
    if config.cluster == "slurm":
        from dask_jobqueue import SLURMCluster

        try:
            return SLURMCluster(**config.slurm)
        except (TypeError, ValueError) as exc:
            raise MyriadError(f"config dask.slurm: {exc}") from None
    raise MyriadError(f"dask.cluster '{config.cluster}' has no distributed cluster")


@contextmanager
def dask_client(config: DaskConfig) -> Iterator[Any]:
    """Context with the configured scheduler active; yields a ``distributed.Client`` or None.

    Inside the context ``dask.compute`` and ``.compute()`` run on the
    configured cluster. ``threads`` yields None; the others yield the client,
    and the cluster is closed on exit.
    """
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
