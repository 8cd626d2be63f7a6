"""The error hierarchy: every code unique, every exit status fits a process exit."""

from __future__ import annotations

import pytest

from pplink import errors


def test_every_error_has_unique_code_help_and_valid_exit() -> None:
    classes = list(errors.ERROR_CLASSES.values())
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


def test_error_for_code_restores_the_class_and_falls_back_to_transport() -> None:
    # A failed run's record carries only the code; the CLI must exit with that class's status.
    for code, cls in errors.ERROR_CLASSES.items():
        err = errors.error_for_code(code, "run r1 failed")
        assert type(err) is cls and err.exit_code == errors.exit_code_for(code)
    assert type(errors.error_for_code(999, "x")) is errors.TransportError
    assert type(errors.error_for_code(None, "x")) is errors.TransportError
