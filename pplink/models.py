"""The base class every pplink boundary model derives from."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["PplinkModel", "canonical_json"]


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8. Used for every digest.

    >>> canonical_json({"b": 1, "a": [1, 2]})
    b'{"a":[1,2],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PplinkModel(BaseModel):
    """Frozen, strict-about-extras pydantic model.

    Frozen so that a validated agreement or message cannot change mid-run; ``extra="forbid"`` so
    that a misspelt key is an error rather than a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
