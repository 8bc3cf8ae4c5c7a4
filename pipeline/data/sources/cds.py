"""ERA5 through the Copernicus Climate Data Store API (cdsapi), one request per dataset per month.

Requests are built from the config: ``reanalysis-era5-single-levels`` for
surface channels, ``reanalysis-era5-pressure-levels`` for level channels,
each with ``product_type``, ``variable`` (ERA5 long names), ``year``,
``month``, ``day``, ``time`` (``HH:MM`` of the configured step),
``pressure_level`` (level channels), ``data_format``, ``download_format:
unarchived`` and ``grid: [d, d]`` with ``d`` the configured grid spacing; the
whole globe is requested, so no ``area``. The CDS interpolates to that
spacing with latitude 90 -> -90; a grid whose spacing does not land on both
poles cannot be requested and raises.

Each (dataset, month) downloads into its own directory under
``download_dir/<dataset>/<YYYY-MM>-<request hash>``: the response is written
into a temporary sibling directory, unpacked there if it is a ZIP (the CDS
sends ZIPs when instant and accumulated fields are mixed, even for
"unarchived"), and the directory is renamed into place only when complete, so
a killed download never looks finished and a rerun skips finished months. A
changed request (other channels, grid...) gets a new hash, hence a new
download. Failed requests are retried with exponential backoff
(``source.retries``, ``source.backoff_seconds``) for network and server
errors, not for rejected requests.

Credentials come from ``CDSAPI_URL``/``CDSAPI_KEY`` or the cdsapi RC file
(``$CDSAPI_RC`` or ``~/.cdsapirc``), are read only when a download is needed,
and are never logged: error texts pass through a redaction of the key.
Downloaded files are read through :class:`~pipeline.data.sources.files.FileCollection`,
the same canonical path as local files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import xarray as xr

from pipeline.config import CdsSourceConfig, MyriadConfig
from pipeline.data.channels import parse_channel
from pipeline.data.sources.canonical import time_axis
from pipeline.data.sources.files import FileCollection, detect_format, extract_zip
from pipeline.data.sources.retry import call_with_retries, is_network_error
from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)

SINGLE_LEVELS = "reanalysis-era5-single-levels"
PRESSURE_LEVELS = "reanalysis-era5-pressure-levels"
DEFAULT_CDS_URL = "https://cds.climate.copernicus.eu/api"
ERA5_START = pd.Timestamp("1940-01-01")

_CREDENTIALS_HELP = (
    "CDS credentials not found: set CDSAPI_URL and CDSAPI_KEY, or write ~/.cdsapirc (or the file named by "
    "CDSAPI_RC) with the two lines 'url: https://cds.climate.copernicus.eu/api' and 'key: <your personal "
    "access token>' (token on your CDS profile page; see https://cds.climate.copernicus.eu/how-to-api)"
)


class CdsClient(Protocol):
    """What we use of ``cdsapi.Client``."""

    def retrieve(self, name: str, request: dict[str, Any], target: str) -> Any: ...


ClientFactory = Callable[[str, str], CdsClient]
"""``factory(url, key) -> client``."""


def default_client(url: str, key: str) -> CdsClient:
    """A quiet ``cdsapi.Client`` for ``url`` and ``key``."""
    import cdsapi

    return cdsapi.Client(url=url, key=key, quiet=True, progress=False)


def cds_credentials() -> tuple[str, str]:
    """``(url, key)`` from ``CDSAPI_URL``/``CDSAPI_KEY``, else the RC file; raise (without any key) if absent."""
    url = os.environ.get("CDSAPI_URL")
    key = os.environ.get("CDSAPI_KEY")
    if not (url and key):
        rc = Path(os.environ.get("CDSAPI_RC", "~/.cdsapirc")).expanduser()
        entries: dict[str, str] = {}
        if rc.is_file():
            for line in rc.read_text().splitlines():
                name, sep, value = line.partition(":")
                if sep:
                    entries[name.strip()] = value.strip()
        url = url or entries.get("url")
        key = key or entries.get("key")
    if not key:
        raise MyriadError(_CREDENTIALS_HELP)
    return url or DEFAULT_CDS_URL, key


@dataclass(frozen=True)
class CdsRequest:
    """One CDS retrieval: dataset, a label (``2020-01`` or ``static``) and the request body."""

    dataset: str
    label: str
    body: dict[str, Any]

    @property
    def digest(self) -> str:
        """Short hash of dataset and body: names the download directory."""
        text = json.dumps({"dataset": self.dataset, "body": self.body}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, threading.Lock())


def _status_code(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    """Network trouble and server errors (5xx, 408, 429) are retried; rejected requests are not."""
    status = _status_code(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    return is_network_error(exc)


class CdsSource:
    """ERA5 downloaded month by month from the CDS (``source.kind: cds``).

    Parameters
    ----------
    config
        The run config; ``config.source`` must be a :class:`CdsSourceConfig`.
    download_dir
        Where downloads go (default ``source.download_dir`` or ``<run_dir>/downloads``).
    client_factory
        ``factory(url, key) -> client`` with ``client.retrieve(dataset, request, target)``;
        default :func:`default_client` (``cdsapi.Client``). Tests pass a stand-in.

    Raises
    ------
    MyriadError
        A grid the CDS cannot produce with poles, a channel without an ERA5
        name, a time axis before 1940.
    """

    name = "cds"
    sequential = False
    network = True

    def __init__(
        self,
        config: MyriadConfig,
        download_dir: Path | None = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        source = config.source
        if not isinstance(source, CdsSourceConfig):
            raise MyriadError(f"source.kind is '{source.kind}', not 'cds'")
        self.source = source
        self.grid = config.grid.build()
        self.channels = tuple(config.channels)
        self.static = tuple(config.static)
        self.download_dir = Path(download_dir or source.download_dir or config.run_dir / "downloads")
        self._client_factory = client_factory or default_client
        self._client: CdsClient | None = None
        self._key: str | None = None
        self._collections: dict[str, FileCollection] = {}
        self._axis = time_axis(config.time.start, config.time.end, config.time.step_hours)
        if self._axis[0] < ERA5_START:
            raise MyriadError(f"time.start {self._axis[0]} is before ERA5 begins ({ERA5_START.date()})")
        self._spacing = self._grid_spacing()
        self._variables = self._era5_variables()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_key"] = None
        return state

    # ---------------------------------------------------------------- requests

    def _grid_spacing(self) -> float:
        spacing = self.grid.resolution_deg
        if abs(180.0 / (self.grid.nlat - 1) - spacing) > 1e-9:
            raise MyriadError(
                f"grid {self.grid.name}: latitude spacing {180.0 / (self.grid.nlat - 1):g} deg differs from longitude "
                f"spacing {spacing:g} deg; the CDS interpolates to a square grid [d, d] "
                "(use nlat = 180/d + 1, nlon = 360/d)"
            )
        if self.source.grid_deg is not None and abs(self.source.grid_deg - spacing) > 1e-9:
            raise MyriadError(
                f"source.grid_deg={self.source.grid_deg:g} does not match grid {self.grid.name} "
                f"(spacing {spacing:g} deg); set source.grid_deg to {spacing:g} or leave it out"
            )
        return spacing

    def _era5_variables(self) -> dict[str, dict[str, set[int]]]:
        """Dataset -> ERA5 long name -> pressure levels (empty set for single-level variables)."""
        variables: dict[str, dict[str, set[int]]] = {}
        for name in self.channels:
            channel = parse_channel(name)
            long_name = channel.info.era5_long
            if long_name is None:
                raise MyriadError(f"channel '{name}': has no ERA5 equivalent, so the CDS cannot provide it")
            dataset = PRESSURE_LEVELS if channel.level is not None else SINGLE_LEVELS
            levels = variables.setdefault(dataset, {}).setdefault(long_name, set())
            if channel.level is not None:
                levels.add(channel.level)
        return variables

    def _body(self, dataset: str, long_names: list[str], times: pd.DatetimeIndex) -> dict[str, Any]:
        body: dict[str, Any] = {
            "product_type": [self.source.product_type],
            "variable": sorted(long_names),
            "year": sorted({f"{t.year}" for t in times}),
            "month": sorted({f"{t.month:02d}" for t in times}),
            "day": sorted({f"{t.day:02d}" for t in times}),
            "time": sorted({f"{t.hour:02d}:00" for t in times}),
            "data_format": self.source.data_format,
            "download_format": "unarchived",
            "grid": [self._spacing, self._spacing],
        }
        if dataset == PRESSURE_LEVELS:
            levels = set().union(*self._variables[dataset].values())
            body["pressure_level"] = [str(level) for level in sorted(levels)]
        return body

    def monthly_requests(self, month: pd.Period) -> list[CdsRequest]:
        """The requests (one per dataset) that cover the configured times in ``month``."""
        times = self._axis[self._axis.to_period("M") == month]
        if len(times) == 0:
            return []
        return [
            CdsRequest(dataset, str(month), self._body(dataset, list(names), times))
            for dataset, names in sorted(self._variables.items())
        ]

    def static_request(self) -> CdsRequest | None:
        """Surface geopotential / land-sea mask at the first configured time (None if no static fields)."""
        if not self.static:
            return None
        names = [parse_channel(name).info.era5_long for name in self.static]
        return CdsRequest(SINGLE_LEVELS, "static", self._body(SINGLE_LEVELS, names, self._axis[:1]))

    def months(self) -> list[pd.Period]:
        """The months the configured time axis touches."""
        return sorted(set(self._axis.to_period("M")))

    # ---------------------------------------------------------------- downloads

    def _client_and_key(self) -> tuple[CdsClient, str]:
        if self._client is None or self._key is None:
            url, key = cds_credentials()
            self._client = self._client_factory(url, key)
            self._key = key
        return self._client, self._key

    def fetch(self, request: CdsRequest) -> Path:
        """Download ``request`` unless already complete; return its directory of data files."""
        final = self.download_dir / request.dataset / f"{request.label}-{request.digest}"
        if final.is_dir():
            return final
        with _lock_for(final):
            if final.is_dir():
                return final
            client, key = self._client_and_key()

            def redact(text: str) -> str:
                return text.replace(key, "***")

            what = f"CDS request {request.dataset} {request.label}"
            extension = "grib" if request.body["data_format"] == "grib" else "nc"
            partial = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
            partial.mkdir(parents=True)
            try:
                target = partial / f"{request.label}.{extension}"
                logger.info("%s: downloading into %s", what, final)
                try:
                    call_with_retries(
                        lambda: client.retrieve(request.dataset, dict(request.body), str(target)),
                        what=what,
                        retries=self.source.retries,
                        backoff_seconds=self.source.backoff_seconds,
                        is_transient=_is_transient,
                        redact=redact,
                    )
                except MyriadError as exc:
                    raise MyriadError(redact(str(exc))) from None
                except Exception as exc:
                    raise MyriadError(f"{what}: failed ({redact(f'{type(exc).__name__}: {exc}')})") from None
                if not target.is_file() or target.stat().st_size == 0:
                    raise MyriadError(f"{what}: the client wrote no data to {target}")
                if detect_format(target) == "zip":
                    extract_zip(target, partial / "unzipped")
                    target.unlink()
                (partial / "request.json").write_text(
                    json.dumps({"dataset": request.dataset, "request": request.body}, indent=1)
                )
                os.replace(partial, final)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            logger.info("%s: complete", what)
        return final

    def download(self, months: list[pd.Period] | None = None) -> list[Path]:
        """Fetch every request of ``months`` (default: all configured months) sequentially."""
        return [self.fetch(r) for month in (months or self.months()) for r in self.monthly_requests(month)]

    @staticmethod
    def _data_files(directory: Path) -> list[Path]:
        return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "request.json")

    def _collection(self, month: pd.Period) -> FileCollection:
        key = str(month)
        if key not in self._collections:
            files = [f for directory in self.download([month]) for f in self._data_files(directory)]
            self._collections[key] = FileCollection(
                files, self.grid, self.channels, cache_dir=self.download_dir / "cache"
            )
        return self._collections[key]

    # ---------------------------------------------------------------- Source

    def available_times(self) -> pd.DatetimeIndex:
        """The configured time axis (ERA5 covers 1940 to a few days ago)."""
        return self._axis

    def read_block(self, times: pd.DatetimeIndex) -> xr.Dataset:
        times = pd.DatetimeIndex(times).as_unit("ns")
        outside = times[~times.isin(self._axis)]
        if len(outside):
            raise MyriadError(f"CDS source: time {outside[0]} is not on the configured time axis")
        months = times.to_period("M")
        blocks = [self._collection(month).read(times[months == month]) for month in sorted(set(months))]
        return blocks[0] if len(blocks) == 1 else xr.concat(blocks, dim="time")

    def static_fields(self) -> xr.Dataset:
        request = self.static_request()
        if request is None:
            return xr.Dataset(coords=self.grid.coords())
        files = self._data_files(self.fetch(request))
        collection = FileCollection(files, self.grid, (), self.static, cache_dir=self.download_dir / "cache")
        return collection.read_static()
