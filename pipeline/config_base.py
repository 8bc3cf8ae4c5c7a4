"""The base class of every config section (its own module to avoid import cycles).

Stage sections live beside their stage (``pipeline/training/config.py``...)
and :mod:`pipeline.config` imports them; both sides import
:class:`StrictModel` from here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipeline.data.channels import parse_channel
from pipeline.errors import MyriadError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def checked_channel_list(value: list[str]) -> list[str]:
    """Validate a list of channel names for a pydantic validator: each parses, none repeats.

    Raises ``ValueError`` (not MyriadError) so pydantic names the config key.
    """
    for name in value:
        try:
            parse_channel(name)
        except MyriadError as exc:
            raise ValueError(str(exc)) from None
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate channel names in {value}")
    return value
