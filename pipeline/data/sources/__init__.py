"""Reanalysis sources behind one small interface (:class:`~pipeline.data.sources.base.Source`).

:func:`build_source` picks the implementation from ``config.source.kind``;
source modules are imported only when chosen (the planet pulls in torch, the
ARCO source gcsfs, the CDS source cdsapi).
"""

from __future__ import annotations

from pipeline.config import MyriadConfig
from pipeline.data.sources.base import Source

__all__ = ["Source", "build_source"]


def build_source(config: MyriadConfig) -> Source:
    """The configured source.

    The planet keeps its solver-state cache in ``<run_dir>/.planet-state``; the
    CDS source downloads into ``source.download_dir`` (default
    ``<run_dir>/downloads``).
    """
    kind = config.source.kind
    if kind == "planet":
        from pipeline.data.sources.planet import PlanetSource

        return PlanetSource(config, config.run_dir / ".planet-state")
    if kind == "files":
        from pipeline.data.sources.files import FilesSource

        return FilesSource(config)
    if kind == "arco":
        from pipeline.data.sources.arco import ArcoSource

        return ArcoSource(config)
    if kind == "cds":
        from pipeline.data.sources.cds import CdsSource

        download_dir = config.source.download_dir or config.run_dir / "downloads"
        return CdsSource(config, download_dir)
    raise AssertionError(f"unhandled source kind {kind!r}")  # config validation admits only the kinds above
