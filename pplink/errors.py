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
    "DeltaChainError",
    "DependencyMissingError",
    "EncodingFileError",
    "EntitiesFileError",
    "KeyFileError",
    "LedgerError",
    "LinkageMapError",
    "MatchError",
    "PplinkError",
    "RecordValidationError",
    "ReleaseError",
    "RoundIntegrityError",
    "SecretError",
    "SignatureError",
    "StateError",
    "TransportError",
    "UsageError",
    "ERROR_CLASSES",
    "ERROR_HELP",
    "error_for_code",
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

#: Every concrete error class by its code, filled as each class is defined.
ERROR_CLASSES: dict[int, type[PplinkError]] = {}


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
        ERROR_CLASSES[cls.code] = cls

    @property
    def exit_code(self) -> int:
        """The process exit status the CLI uses for this error."""
        return exit_code_for(self.code)


class ConfigError(PplinkError, ValueError):
    """A configuration value is missing or invalid (code 100, exit status 20)."""

    code = 100
    help = "A configuration value is missing or invalid."


class AgreementError(PplinkError, ValueError):
    """The linkage agreement is missing, unreadable or invalid (code 101, exit status 21)."""

    code = 101
    help = "The linkage agreement file is missing, unreadable or invalid; every problem is listed."


class AgreementMismatchError(PplinkError, ValueError):
    """An artefact was made under a different agreement or schema (code 102, exit status 22)."""

    code = 102
    help = "An artefact was produced under a different agreement (or schema) and is refused."


class KeyFileError(PplinkError, ValueError):
    """A key file is missing, malformed or too readable (code 201, exit status 41)."""

    code = 201
    help = "A key file is missing, malformed, or a private key is readable by group or others."


class SecretError(PplinkError, ValueError):
    """The linkage secret is missing, malformed or too readable (code 202, exit status 42)."""

    code = 202
    help = "The linkage secret is missing, malformed or too readable."


class SignatureError(PplinkError, ValueError):
    """A signature does not verify against the agreement's public key (code 203, exit status 43)."""

    code = 203
    help = "A signature does not verify against the public key the agreement names."


class LedgerError(PplinkError, ValueError):
    """The privacy ledger is malformed, tampered with, unverifiable or cannot be written (code 204, exit status 44)."""

    code = 204
    help = "The privacy ledger is malformed, torn, tampered with or does not verify."


class RecordValidationError(PplinkError, ValueError):
    """Input records failed validation (code 301, exit status 61)."""

    code = 301
    help = "Input records failed validation; every bad row is listed by file, row and field."


class EncodingFileError(PplinkError, ValueError):
    """An encodings (.enc) or token file is truncated, malformed or inconsistent (code 302, exit status 62)."""

    code = 302
    help = "An encodings (.enc) or token file is truncated, malformed or inconsistent."


class LinkageMapError(PplinkError, ValueError):
    """A pseudonym map does not fit the node's token file (code 303, exit status 63)."""

    code = 303
    help = "A pseudonym map does not fit the node's token file."


class EntitiesFileError(LinkageMapError):
    """A ``record_id,entity_id`` file is unreadable or malformed (code 304, exit status 64)."""

    code = 304
    help = "An entities file (record_id,entity_id) is unreadable or malformed; the message names the row."


class RoundIntegrityError(PplinkError, ValueError):
    """A round's outputs are incomplete, stale, mixed or edited (code 305, exit status 65)."""

    code = 305
    help = ("A round's outputs are incomplete, stale, mixed or edited (manifest missing, unsigned, or a file's "
            "hash differs); re-run the round or fetch its outputs again.")


class MatchError(PplinkError, ValueError):
    """The coordinator refused a set of encodings files (code 401, exit status 81)."""

    code = 401
    help = "The coordinator refused a set of encodings files (duplicate, unknown party, bad shape)."


class BudgetExceededError(PplinkError, ValueError):
    """A release would exceed the privacy budget and was refused (code 402, exit status 82)."""

    code = 402
    help = "A release would exceed the agreement's privacy budget and was refused before any noise."


class ReleaseError(PplinkError, ValueError):
    """A release query is not allowed by the agreement or its inputs are invalid (code 403, exit status 83)."""

    code = 403
    help = "A release query is not allowed by the agreement or its inputs are invalid."


class TransportError(PplinkError, RuntimeError):
    """A Flower deployment step failed (code 404, exit status 84)."""

    code = 404
    help = "A Flower deployment step failed: a node dropped out, a reply was refused, a process died."


class StateError(PplinkError, ValueError):
    """The coordinator's linkage state cannot be opened or fails authentication (code 416, exit status 96)."""

    code = 416
    help = ("The coordinator's incremental linkage state cannot be opened: tampered with, truncated, "
            "sealed under another coordinator key, or made under another agreement.")


class DeltaChainError(PplinkError, ValueError):
    """A delta does not follow the last file accepted from its agency (code 417, exit status 97)."""

    code = 417
    help = ("A delta file does not follow the last file the coordinator accepted from its agency: "
            "out of order, applied twice, or from a fork of the agency's history.")


class UsageError(PplinkError, ValueError):
    """The command line was used wrongly (code 501, exit status 101)."""

    code = 501
    help = "The command line was used wrongly (missing input file, conflicting options)."


class DependencyMissingError(PplinkError, ImportError):
    """An optional dependency is not installed (code 502, exit status 102)."""

    code = 502
    help = "An optional dependency is not installed; the message names the extra to install."


def error_for_code(code: int | None, message: str) -> PplinkError:
    """The error of class ``code`` carrying ``message``; :class:`TransportError` for an unknown code.

    Used where an error crossed a process or network boundary as a code (a failed Flower run's record).

    >>> type(error_for_code(101, "x")).__name__, type(error_for_code(None, "x")).__name__
    ('AgreementError', 'TransportError')
    """
    cls = ERROR_CLASSES.get(code) if code is not None else None
    return (cls or TransportError)(message)
