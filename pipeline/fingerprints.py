"""Stage cache keys: what lets a rerun of a flow skip finished stages.

A stage's key is derived from the config sections it depends on and the path
it writes, so it is known *before* the stage runs and is the same after. The
flow also asks whether the stage's output is actually there and valid
(``*_ready``); when it is not (never made, deleted, incomplete, or made from
another config) the task runs with ``refresh_cache=True``, which recomputes
it and records the result under the same key. A rerun with nothing changed
therefore finds a valid output and a cached result, and skips the stage.
Both read only metadata, never data.
"""

from __future__ import annotations

from pipeline.config import INGEST_SECTIONS, MyriadConfig


def analysis_key(config: MyriadConfig) -> str:
    """Cache key of the ingest stage: the ingest sections' hash and the store path."""
    return f"analysis-{config.section_hash(*INGEST_SECTIONS)}-{config.analysis_path.resolve()}"


def analysis_ready(config: MyriadConfig) -> bool:
    """True when the analysis store is complete and was written from this config."""
    from pipeline.data.store import store_matches_config

    return store_matches_config(config)


def statistics_key(config: MyriadConfig) -> str:
    """Cache key of the statistics stage."""
    return f"statistics-{config.section_hash(*INGEST_SECTIONS, 'statistics')}-{config.stats_path.resolve()}"


def statistics_ready(config: MyriadConfig) -> bool:
    """True when stats.nc is up to date for this config's complete analysis store."""
    from pipeline.data.statistics import statistics_match_config

    return analysis_ready(config) and statistics_match_config(config)


def _ensemble_stamp(path: object) -> dict[str, object]:
    """Identity of an ensemble store from metadata: its layout attribute and completion record."""
    import hashlib
    import json

    import numpy as np
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        layout = group.attrs.get("myriad_layout")
        record = np.asarray(group["unit_complete"][...])
    except Exception:  # missing or unreadable: the stage itself reports it
        return {"path": str(path), "missing": True}
    return {"path": str(path), "layout": hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16],
            "record": hashlib.sha256(record.tobytes()).hexdigest()[:16]}


def diagnostics_key(config: MyriadConfig) -> str:
    """Cache key of the diagnostics stage.

    Hash of the sections the numbers depend on (``diagnostics``, ``ensemble``,
    ``statistics`` and the ingest sections; not ``dask``, which changes only
    how they are computed), the analysis store's config hash, the identity
    and completion record of the verified (and model-climate) ensemble store,
    and the output path. Recorded in the store's attributes.
    """
    import hashlib
    import json

    from pipeline.diagnostics.config import DiagnosticsConfig
    from pipeline.diagnostics.run import ensemble_path

    settings = config.diagnostics or DiagnosticsConfig()
    from pipeline.errors import MyriadError

    try:
        stores = [_ensemble_stamp(ensemble_path(config).resolve())]
    except MyriadError:  # no ensemble named: the stage reports it
        stores = []
    if settings.model_climate is not None and settings.model_climate.ensemble:
        stores.append(_ensemble_stamp(ensemble_path(config, settings.model_climate.ensemble).resolve()))
    text = json.dumps({"config": config.section_hash("diagnostics", "ensemble", "statistics", *INGEST_SECTIONS),
                       "stores": stores}, sort_keys=True, default=str)
    out = settings.store_path(config.run_dir).resolve()
    return f"diagnostics-{hashlib.sha256(text.encode()).hexdigest()[:16]}-{out}"


def diagnostics_ready(config: MyriadConfig) -> bool:
    """True when the diagnostics store exists and was made with the current key."""
    import zarr

    from pipeline.diagnostics.config import DiagnosticsConfig
    from pipeline.diagnostics.run import KEY_ATTR

    settings = config.diagnostics or DiagnosticsConfig()
    path = settings.store_path(config.run_dir)
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        stored = group.attrs.get(KEY_ATTR)
    except Exception:  # zarr raises several types for missing or unreadable stores
        return False
    return stored == diagnostics_key(config)
