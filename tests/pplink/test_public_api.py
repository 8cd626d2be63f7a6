"""The package's public names: sorted, all importable."""

from __future__ import annotations

import pplink


def test_all_is_sorted_and_resolves() -> None:
    assert pplink.__all__ == sorted(pplink.__all__)
    for name in pplink.__all__:
        assert getattr(pplink, name) is not None


def test_unknown_name_raises_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError):
        pplink.no_such_thing  # noqa: B018
