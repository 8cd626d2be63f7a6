"""The base class every pplink boundary model derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["PplinkModel"]


class PplinkModel(BaseModel):
    """Frozen, strict-about-extras pydantic model.

    Frozen so that a validated agreement or message cannot change mid-run; ``extra="forbid"`` so
    that a misspelt key is an error rather than a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
