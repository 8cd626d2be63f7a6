"""pplink: privacy-preserving federated record linkage and scoring.

The shared library. Agencies run :mod:`nodes`, the coordinator runs :mod:`coordinator`; both
import from here, never from each other. Public names are imported lazily so that
``import pplink`` stays cheap and a node never loads the coordinator's dependencies.

>>> import pplink
>>> pplink.load_agreement.__name__
'load_agreement'
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = [
    "AgreementConfig",
    "ClkEncoder",
    "EncodingsFile",
    "PplinkError",
    "SecretBytes",
    "__version__",
    "derive_linkage_key",
    "load_agreement",
    "read_encodings",
    "write_encodings",
]

try:
    __version__ = version("pplink")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "AgreementConfig": "pplink.agreement",
    "load_agreement": "pplink.agreement",
    "ClkEncoder": "pplink.encoding",
    "EncodingsFile": "pplink.encfile",
    "read_encodings": "pplink.encfile",
    "write_encodings": "pplink.encfile",
    "PplinkError": "pplink.errors",
    "SecretBytes": "pplink.crypto",
    "derive_linkage_key": "pplink.crypto",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pplink' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
