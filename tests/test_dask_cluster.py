"""The configured Dask cluster: threaded scheduler, and the SLURM job it would submit."""

from __future__ import annotations

import dask
import dask.array as da
import pytest

from pipeline.config import DaskConfig
from pipeline.dask_cluster import build_cluster, dask_client
from pipeline.errors import MyriadError


def test_threads_kind_sets_the_threaded_scheduler() -> None:
    with dask_client(DaskConfig(cluster="threads", n_workers=3)) as client:
        assert client is None
        assert dask.config.get("scheduler") == "threads" and dask.config.get("num_workers") == 3
        assert int(da.ones((10, 10), chunks=5).sum().compute()) == 100
    assert dask.config.get("num_workers", None) != 3


def test_slurm_kind_builds_the_configured_job_script() -> None:
    config = DaskConfig(cluster="slurm", slurm={"cores": 4, "memory": "16GB", "walltime": "02:00:00",
                                               "job_extra_directives": ["--partition=cpu"]})
    cluster = build_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -t 02:00:00" in script and "#SBATCH --partition=cpu" in script
    assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH --mem=15G" in script


def test_slurm_kind_with_a_bad_keyword_is_a_config_error() -> None:
    with pytest.raises(MyriadError, match="config dask.slurm"):
        build_cluster(DaskConfig(cluster="slurm", slurm={"cores": 1, "memory": "1GB", "no_such_option": 1}))
