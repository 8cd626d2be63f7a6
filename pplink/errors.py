"""One error hierarchy for pplink, with stable codes and process exit statuses.

Every error pplink raises on purpose derives from :class:`PplinkError`. Each concrete class
declares a three-digit ``code`` whose hundreds digit names the family:

=====  ==========================
1xx    agreement and configuration
2xx    keys, signatures, ledger
3xx    agency node (records, encodings it writes)
4xx    coordinator (matching, releases, transport)
5xx    command line and environment
=====  ==========================

Process exit statuses must fit in 0..255, so the CLI exits with ``exit_code``, derived from
``code`` as ``20 * family + number``: ``PPL101`` exits 21, ``PPL301`` exits 61, ``PPL501`` exits 101.
Messages name files, rows and fields, never record values, secrets or key bytes.

>>> AgreementError("agreement.toml: bad").code, AgreementError("x").exit_code
(101, 21)
>>> exit_code_for(412)
92
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AgreementError",
    "AgreementMismatchError",
    "BudgetExceededError",
    "ConfigError",
    "DependencyMissingError",
    "EncodingFileError",
    "KeyFileError",
    "LedgerError",
    "LinkageMapError",
    "MatchError",
    "PplinkError",
    "RecordValidationError",
    "ReleaseError",
    "SecretError",
    "SignatureError",
    "TransportError",
    "UsageError",
    "ERROR_HELP",
    "exit_code_for",
]


def exit_code_for(code: int) -> int:
    """Map a three-digit pplink error code to a process exit status (fits in 0..255).

    Args:
        code: the error code, 100..599 with the last two digits below 20.

    Returns:
        ``20 * (code // 100) + code % 100``.
    """
    family, number = divmod(code, 100)
    if not 1 <= family <= 5 or number >= 20:
        raise ValueError(f"error code {code} is outside 1xx..5xx or its number is 20 or more")
    return 20 * family + number


#: One help line per code; ``docs/errors.md`` is generated from the same table by a test.
ERROR_HELP: dict[int, str] = {}


class PplinkError(Exception):
    """Root of every deliberate pplink error.

    Subclasses must set ``code`` (checked when the class is created) and ``help``.
    """

    code: ClassVar[int] = 0
    help: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its own error code")
        exit_code_for(cls.code)  # validates the range
        if not cls.__dict__.get("help"):
            raise TypeError(f"{cls.__name__} must declare a help line")
        if cls.code in ERROR_HELP:
            raise TypeError(f"error code {cls.code} is used twice")
        ERROR_HELP[cls.code] = cls.help

    @property
    def exit_code(self) -> int:
        """The process exit status the CLI uses for this error."""
        return exit_code_for(self.code)


class ConfigError(PplinkError, ValueError):
    code = 100
    help = "A configuration value is missing or invalid."


class AgreementError(PplinkError, ValueError):
    code = 101
    help = "The linkage agreement file is missing, unreadable or invalid; every problem is listed."


class AgreementMismatchError(PplinkError, ValueError):
    code = 102
    help = "An artefact was produced under a different agreement (or schema) and is refused."


class KeyFileError(PplinkError, ValueError):
    code = 201
    help = "A key file is missing, malformed, or a private key is readable by group or others."


class SecretError(PplinkError, ValueError):
    code = 202
    help = "The linkage secret is missing, malformed or too readable."


class SignatureError(PplinkError, ValueError):
    code = 203
    help = "A signature does not verify against the public key the agreement names."


class LedgerError(PplinkError, ValueError):
    code = 204
    help = "The privacy ledger is malformed, torn, tampered with or does not verify."


class RecordValidationError(PplinkError, ValueError):
    code = 301
    help = "Input records failed validation; every bad row is listed by file, row and field."


class EncodingFileError(PplinkError, ValueError):
    code = 302
    help = "An encodings (.enc) or token file is truncated, malformed or inconsistent."


class LinkageMapError(PplinkError, ValueError):
    code = 303
    help = "A pseudonym map does not fit the node's token file."


class MatchError(PplinkError, ValueError):
    code = 401
    help = "The coordinator refused a set of encodings files (duplicate, unknown party, bad shape)."


class BudgetExceededError(PplinkError, ValueError):
    code = 402
    help = "A release would exceed the agreement's privacy budget and was refused before any noise."


class ReleaseError(PplinkError, ValueError):
    code = 403
    help = "A release query is not allowed by the agreement or its inputs are invalid."


class TransportError(PplinkError, RuntimeError):
    code = 404
    help = "A Flower deployment step failed: a node dropped out, a reply was refused, a process died."


class UsageError(PplinkError, ValueError):
    code = 501
    help = "The command line was used wrongly (missing input file, conflicting options)."


class DependencyMissingError(PplinkError, ImportError):
    code = 502
    help = "An optional dependency is not installed; the message names the extra to install."
