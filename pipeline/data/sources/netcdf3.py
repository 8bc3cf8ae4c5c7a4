"""Completeness check for classic NetCDF (CDF-1, CDF-2, CDF-5) files.

The netCDF library reads a truncated classic file without complaint (missing
bytes come back as fill values), so a cut download would ingest as zeros.
The classic header records where each variable's data begin and how large
they are; the file must reach the end of the last one:

``expected = max(begin_v + vsize_v)`` over fixed-size variables and
``begin_first_record + numrecs x sum(vsize of record variables)`` over record
variables, where a lone record variable is stored unpadded (format spec:
Unidata "NetCDF Classic Format Specification").
"""

from __future__ import annotations

import math
from pathlib import Path

_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
_STREAMING = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


class _HeaderTooShort(ValueError):
    """The bytes read so far end inside the header."""


class _Header:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 4
        version = data[3]
        if version not in (1, 2, 5):
            raise ValueError(f"unknown classic NetCDF version {version}")
        self.count_size = 8 if version == 5 else 4
        self.offset_size = 4 if version == 1 else 8

    def uint(self, size: int) -> int:
        if self.pos + size > len(self.data):
            raise _HeaderTooShort("header ends early")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return value

    def count(self) -> int:
        return self.uint(self.count_size)

    def skip_padded(self, nbytes: int) -> None:
        self.pos += (nbytes + 3) // 4 * 4

    def name(self) -> None:
        self.skip_padded(self.count())

    def list_header(self, tag: int) -> int:
        found = self.uint(4)
        n = self.count()
        if found not in (0, tag):
            raise ValueError(f"bad header tag {found:#x}")
        return n

    def attributes(self) -> None:
        for _ in range(self.list_header(_NC_ATTRIBUTE)):
            self.name()
            nc_type = self.uint(4)
            self.skip_padded(self.count() * _TYPE_SIZES[nc_type])


def expected_size(path: Path) -> int:
    """Bytes a complete classic NetCDF file needs, read from its header.

    Raises
    ------
    ValueError
        The header itself is cut short or malformed.
    """
    size = path.stat().st_size
    nbytes = 1 << 16  # headers are small (ERA5: a few kB); read more only if needed
    while True:
        with open(path, "rb") as handle:
            data = handle.read(nbytes)
        try:
            return _expected_size(_Header(data))
        except _HeaderTooShort:
            if nbytes >= size:
                raise
            nbytes *= 4


def _expected_size(header: _Header) -> int:
    numrecs = header.count()
    lengths = []
    for _ in range(header.list_header(_NC_DIMENSION)):
        header.name()
        lengths.append(header.count())
    header.attributes()
    fixed_end = header.pos
    records: list[tuple[int, int, int]] = []  # (begin, vsize, unpadded size) of record variables
    for _ in range(header.list_header(_NC_VARIABLE)):
        header.name()
        dim_ids = [header.count() for _ in range(header.count())]
        header.attributes()
        item_size = _TYPE_SIZES[header.uint(4)]
        vsize = header.count()
        begin = header.uint(header.offset_size)
        if dim_ids and lengths[dim_ids[0]] == 0:
            unpadded = item_size * math.prod(lengths[d] for d in dim_ids[1:])
            records.append((begin, vsize, unpadded))
        else:
            fixed_end = max(fixed_end, begin + vsize)
    if not records or numrecs == 0 or numrecs in _STREAMING:
        return fixed_end
    record_size = records[0][2] if len(records) == 1 else sum(vsize for _, vsize, _ in records)
    return max(fixed_end, min(begin for begin, _, _ in records) + numrecs * record_size)


def check_complete(path: Path) -> None:
    """Raise ``EOFError`` if the classic NetCDF file ``path`` is shorter than its header says."""
    need = expected_size(path)
    have = path.stat().st_size
    if have < need:
        raise EOFError(f"truncated: {have} of {need} bytes")
