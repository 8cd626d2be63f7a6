"""The error hierarchy: every code unique, every exit status fits a process exit."""

from __future__ import annotations

import pytest

from pplink import errors


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def test_every_error_has_unique_code_help_and_valid_exit() -> None:
    classes = _all_subclasses(errors.PplinkError)
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert cls.help
        assert 0 < errors.exit_code_for(cls.code) < 256
    assert set(codes) <= set(errors.ERROR_HELP)


def test_subclass_without_code_is_rejected() -> None:
    with pytest.raises(TypeError, match="must declare its own error code"):
        type("NoCode", (errors.PplinkError,), {"help": "x"})


def test_duplicate_code_is_rejected() -> None:
    with pytest.raises(TypeError, match="used twice"):
        type("Dupe", (errors.PplinkError,), {"code": 101, "help": "x"})
