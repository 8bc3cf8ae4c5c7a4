"""Small shared helpers for the diagnostics: chunk handling and binned counting.

Everything here stays lazy under Dask; nothing calls ``.compute()`` or
``.values`` on data (only on coordinates, which are in memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from pipeline.errors import MyriadError

MEMBER = "member"


def is_lazy(obj: xr.DataArray) -> bool:
    """True when the DataArray is Dask-backed."""
    return obj.chunks is not None


def whole(obj: xr.DataArray, *dims: str) -> xr.DataArray:
    """Rechunk (lazily) so that each of ``dims`` lies in one chunk; numpy passes through.

    The diagnostics' kernels take these dims as core dims (members for member
    statistics, latitude/longitude for spectra). Rechunking only where a dim is
    split keeps well-chunked inputs untouched.
    """
    if not is_lazy(obj):
        return obj
    split = {d: -1 for d in dims if d in obj.dims and len(obj.chunksizes[d]) > 1}
    return obj.chunk(split) if split else obj


def require_dims(obj: xr.DataArray, dims: Sequence[str], what: str) -> None:
    """Raise a :class:`MyriadError` naming ``what`` unless ``obj`` has all ``dims``."""
    missing = [d for d in dims if d not in obj.dims]
    if missing:
        raise MyriadError(f"diagnostics: {what} needs dims {tuple(dims)}; {missing} missing from {obj.dims}")


def float_dtype(*objs: xr.DataArray) -> np.dtype:
    """float32 when every input is float32 (or narrower), else float64."""
    dt = np.result_type(*[o.dtype for o in objs], np.float32)
    return np.dtype(np.float64) if not np.issubdtype(dt, np.floating) or dt.itemsize > 4 else np.dtype(np.float32)


def _bincount_kernel(index: np.ndarray, *weights: np.ndarray, nbins: int, dtype: np.dtype) -> np.ndarray:
    """Counts (or weighted sums) of ``index`` in ``0..nbins-1`` along the last axis.

    ``index < 0`` is ignored. Returns shape ``index.shape[:-1] + (nbins,)``; the
    rows are counted at once by offsetting each row's bins.
    """
    lead = index.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    idx = index.reshape(rows, -1).astype(np.int64, copy=False)
    w = None
    if weights:
        w = np.broadcast_to(weights[0], index.shape).reshape(rows, -1)
    valid = (idx >= 0) & (idx < nbins)
    flat = (idx + (np.arange(rows, dtype=np.int64) * nbins)[:, None])[valid]
    counts = np.bincount(flat, weights=None if w is None else w[valid].astype(np.float64), minlength=rows * nbins)
    return counts.reshape(lead + (nbins,)).astype(dtype, copy=False)


def binned_sum(
    index: xr.DataArray,
    nbins: int,
    bin_dim: str,
    reduce_dims: Sequence[str],
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Count points (or sum ``weights``) per bin ``index`` over ``reduce_dims``.

    ``index`` holds integer bins ``0..nbins-1`` (negative: skip the point). The
    last of ``reduce_dims`` is the kernel's core dim (made whole in each chunk)
    and the rest are summed afterwards by xarray, so a chunk needs only that one
    dim whole (e.g. a latitude band with full longitude). Memory per chunk is
    the chunk plus ``rows x nbins`` counts, whatever the number of bins.
    """
    reduce_dims = [d for d in reduce_dims if d in index.dims]
    if not reduce_dims:
        raise MyriadError("diagnostics: binned_sum needs at least one dim to reduce over")
    core = reduce_dims[-1]
    dtype = np.dtype(np.int64) if weights is None else np.dtype(np.float64)
    args = [whole(index, core)]
    core_dims = [[core]]
    if weights is not None:
        if core not in weights.dims:
            weights = weights * xr.ones_like(index[core], dtype=np.float64)
        args.append(whole(weights, core))
        core_dims.append([core])
    out = xr.apply_ufunc(
        _bincount_kernel,
        *args,
        input_core_dims=core_dims,
        output_core_dims=[[bin_dim]],
        kwargs={"nbins": nbins, "dtype": dtype},
        dask="parallelized",
        output_dtypes=[dtype],
        dask_gufunc_kwargs={"output_sizes": {bin_dim: nbins}},
    )
    rest = reduce_dims[:-1]
    return out.sum(rest) if rest else out
