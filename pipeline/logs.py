"""Log set-up for Myriad's entry points (the CLI and the torchrun workers).

Our own loggers (``pipeline.*``) report at INFO; third-party libraries
(httpx, distributed, torch) only at WARNING, so a run prints its progress and
not every HTTP request or Dask heartbeat. Under torchrun each line carries
``[rank r/w]`` and only rank 0 reports INFO.
"""

from __future__ import annotations

import logging
import os
import sys


def configure_logging() -> None:
    """Configure the root handler once for this process (idempotent).

    Dask's ``distributed`` configures its own loggers at INFO when imported;
    ``DASK_LOGGING__DISTRIBUTED`` (inherited by worker processes) lowers them
    unless the user set it.
    """
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(logging.INFO if rank == 0 else logging.WARNING)
