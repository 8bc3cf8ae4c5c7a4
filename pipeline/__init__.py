"""Myriad: a distributed weather and climate ensemble pipeline.

Stages: ingest reanalysis (or the embedded shallow-water planet) into Zarr,
train SFNO / Spherical DYffusion models, generate huge bred-vector ensembles,
and compute verification, spectral and extreme diagnostics with Dask.
"""

__version__ = "0.1.0"
