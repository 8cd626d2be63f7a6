"""The package's public names: sorted, lazily imported, and each the object its home module defines."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

import pplink


def test_all_is_sorted_and_each_name_is_its_home_modules_object() -> None:
    # A lazy re-export must hand out the very object of the module that defines it, not a copy or
    # a stale alias left behind by a move.
    assert pplink.__all__ == sorted(pplink.__all__)
    for name in pplink.__all__:
        if name == "__version__":
            assert isinstance(pplink.__version__, str) and pplink.__version__
            continue
        home = import_module(pplink._LAZY[name])
        assert getattr(pplink, name) is getattr(home, name)
        assert name in home.__all__
    assert set(pplink._LAZY) == set(pplink.__all__) - {"__version__"}


def test_import_pplink_loads_neither_side_nor_heavy_dependencies() -> None:
    # `import pplink` must stay cheap: a node never loads the coordinator's stack (OpenDP, anonlink, Flower).
    code = (
        "import sys, pplink\n"
        "heavy = [m for m in ('coordinator', 'nodes', 'opendp', 'anonlink', 'flwr', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError):
        pplink.no_such_thing  # noqa: B018
