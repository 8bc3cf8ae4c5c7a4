"""The base class of every config section (its own module to avoid import cycles).

Stage sections live beside their stage (``pipeline/training/config.py``...)
and :mod:`pipeline.config` imports them; both sides import
:class:`StrictModel` from here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
