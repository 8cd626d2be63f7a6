"""The linkage agreement: one TOML file every party signs up to.

``AgreementConfig`` is the authored file, validated by pydantic. Its agreement id is the SHA-256
of its canonical JSON (sorted keys, no whitespace) and is stamped on every artefact; an artefact
made under another agreement is refused.

``load_agreement`` reads TOML, upgrades older ``schema_version`` layouts, then validates and
raises one :class:`~pplink.errors.AgreementError` listing every problem.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from pplink.crypto import parse_public_key
from pplink.errors import AgreementError, KeyFileError, UsageError
from pplink.identifier_schema import (
    ColumnName,
    FieldKind,
    Hardening,
    IdentifierField,
    IdentifierSchema,
    Salt,
)
from pplink.models import PplinkModel, canonical_json
from pplink.transparency import Transparency

__all__ = [
    "Accounting",
    "AgreementConfig",
    "CURRENT_SCHEMA_VERSION",
    "PARTY_ID_PATTERN",
    "RESERVED_PARTY_IDS",
    "FieldKind",
    "Hardening",
    "IdentifierField",
    "IdentifierSchema",
    "Linkage",
    "Party",
    "PrivacyBudget",
    "ReleaseAttribute",
    "ReleaseRules",
    "Retention",
    "Role",
    "Salt",
    "Scoring",
    "canonical_json",
    "check_party_id",
    "load_agreement",
    "parse_agreement",
]

CURRENT_SCHEMA_VERSION = 1

#: A party id is a safe slug: it names key files, maps and folders, so it can hold no path
#: separator, dot, space or upper-case letter.
PARTY_ID_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
PartyId = Annotated[str, StringConstraints(pattern=PARTY_ID_PATTERN)]
RESERVED_PARTY_IDS = ("coordinator", "auditor")


def check_party_id(party: str) -> str:
    """Return ``party`` if it is a safe party id; refuse anything else before it names a file.

    >>> check_party_id("social_care")
    'social_care'
    >>> check_party_id("../x")
    Traceback (most recent call last):
    ...
    pplink.errors.UsageError: '../x' is not a party id (a-z, 0-9 and _, starting with a letter, at most 40)

    Raises:
        UsageError: not a lower-case letter followed by up to 39 lower-case letters, digits or ``_``.
    """
    if not isinstance(party, str) or not re.fullmatch(PARTY_ID_PATTERN, party):
        shown = repr(party[:40]) if isinstance(party, str) else type(party).__name__
        raise UsageError(f"{shown} is not a party id (a-z, 0-9 and _, starting with a letter, at most 40)")
    return party


class Role(StrEnum):
    """What a party does in the linkage."""

    AGENCY = "agency"
    COORDINATOR = "coordinator"
    AUDITOR = "auditor"


class Party(PplinkModel):
    """One party to the agreement and its Ed25519 public key."""

    id: PartyId
    role: Role
    name: str = ""
    public_key: str
    #: Date formats this agency's records use (strptime), overriding the schema's default list.
    date_formats: tuple[str, ...] | None = None
    #: What this agency sends the coordinator: signed pplink ``.enc`` files, or the unsigned
    #: ``{"clks": [...]}`` JSON that anonlink-client and clkhash write (``pplink agreement schema``
    #: and ``pplink secret derive-key`` give such an agency the schema and key).
    encodings: Literal["pplink", "clkhash-json"] = "pplink"
    #: How a family opts out at this agency (whom to tell, and how), for the published notice.
    opt_out_how: str = ""

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, value: str) -> str:
        try:
            parse_public_key(value)
        except KeyFileError as exc:
            raise ValueError(str(exc)) from None
        return value


_Similarity = Annotated[float, Field(gt=0.0, lt=1.0)]


class Linkage(PplinkModel):
    """How the coordinator matches encodings.

    The threshold is a round setting, not part of what is encoded: ``"auto"`` lets every round choose
    it from its own candidate pairs (the estimated best F1, or the lowest meeting ``precision_floor``),
    a number fixes it. ``coordinator match --threshold`` may override either within ``threshold_bounds``.
    """

    #: Dice similarity at or above which two encodings may be linked, or "auto" (chosen per round).
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] | Literal["auto"] = "auto"
    #: The range the parties agree a round's threshold may take (chosen or given); unset: (0, 1).
    threshold_bounds: tuple[_Similarity, _Similarity] | None = None
    #: With "auto": choose the lowest threshold whose estimated precision reaches this.
    precision_floor: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    #: Whether a round may continue without an agency that dropped out (it is then named).
    allow_missing_parties: bool = False
    #: The privacy loss of each round's ``link-scores`` release (its estimated precision and recall
    #: are published from it; under zCDP read as that release alone at the budget's delta). None: no
    #: release, and no estimate leaves the coordinator. See docs/privacy-accounting.md.
    calibration_epsilon: Annotated[float, Field(gt=0.0, le=100.0)] | None = None

    @model_validator(mode="after")
    def _threshold_within_bounds(self) -> Linkage:
        if self.threshold_bounds is not None:
            low, high = self.threshold_bounds
            if not low < high:
                raise ValueError("threshold_bounds must be [low, high] with low below high")
            if self.threshold != "auto" and not low <= self.threshold <= high:
                raise ValueError("threshold lies outside threshold_bounds")
        return self

    @property
    def fixed_threshold(self) -> float | None:
        """The agreed threshold, ``None`` when every round chooses its own ("auto")."""
        return None if self.threshold == "auto" else self.threshold

    @property
    def bounds(self) -> tuple[float, float]:
        """The agreed threshold range, ``(0, 1)`` when unset."""
        return self.threshold_bounds or (0.0, 1.0)


class Accounting(StrEnum):
    """How privacy losses compose: pure epsilon-DP, or zero-concentrated DP (rho) converted to (epsilon, delta)."""

    PURE = "pure"
    ZCDP = "zcdp"


class PrivacyBudget(PplinkModel):
    """The total privacy loss all releases together may spend."""

    epsilon: Annotated[float, Field(gt=0.0, le=100.0)]
    delta: Annotated[float, Field(ge=0.0, lt=1e-3)] = 1e-6
    accounting: Accounting = Accounting.ZCDP

    @model_validator(mode="after")
    def _delta_for_zcdp(self) -> PrivacyBudget:
        if self.accounting is Accounting.ZCDP and self.delta == 0.0:
            raise ValueError("zcdp accounting needs delta > 0 to convert rho to (epsilon, delta)")
        return self


class ReleaseAttribute(PplinkModel):
    """A non-identifying attribute nodes may send with their encodings for DP releases.

    Categorical attributes list their public values (so counts are pure DP with no threshold);
    numeric ones give bounds and bins for histograms.
    """

    column: ColumnName
    values: tuple[str, ...] | None = None
    lower: float | None = None
    upper: float | None = None
    bins: Annotated[int, Field(gt=0, le=1000)] | None = None

    @model_validator(mode="after")
    def _categorical_or_numeric(self) -> ReleaseAttribute:
        numeric = (self.lower, self.upper, self.bins)
        if self.values is not None and any(v is not None for v in numeric):
            raise ValueError(f"release attribute {self.column}: give either values or lower/upper/bins, not both")
        if self.values is None:
            if any(v is None for v in numeric):
                raise ValueError(f"release attribute {self.column}: needs values, or lower, upper and bins")
            assert self.lower is not None and self.upper is not None
            if not self.lower < self.upper:
                raise ValueError(f"release attribute {self.column}: lower must be below upper")
        elif len(set(self.values)) != len(self.values) or not self.values:
            raise ValueError(f"release attribute {self.column}: values must be distinct and non-empty")
        return self


class ReleaseRules(PplinkModel):
    """What the coordinator may release, and the minimum noisy cell size it may show."""

    min_cell_size: Annotated[int, Field(ge=0)] = 10
    attributes: tuple[ReleaseAttribute, ...] = ()


class Scoring(PplinkModel):
    """Who holds the label and which feature columns each agency contributes."""

    label_owner: PartyId
    label_column: ColumnName = "outcome"
    subgroup_attribute: ColumnName | None = "deprivation_quintile"
    features: dict[PartyId, tuple[ColumnName, ...]]
    holdout_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2


class Retention(PplinkModel):
    """How long each artefact may be kept, in days."""

    encodings_days: Annotated[int, Field(gt=0)] = 30
    linkage_days: Annotated[int, Field(gt=0)] = 365
    ledger_days: Annotated[int, Field(gt=0)] = 2555
    #: Incremental linkage: entity pseudonyms are replaced by fresh ones every this many days, so
    #: that agencies cannot follow a person across rotation periods; ``None`` keeps them stable.
    pseudonym_days: Annotated[int, Field(gt=0)] | None = None


class AgreementConfig(PplinkModel):
    """The whole authored agreement file."""

    schema_version: Literal[1] = 1
    name: Annotated[str, Field(min_length=1)]
    #: ``pplink secret check`` of the agencies' linkage secret: a node with another secret (for
    #: example after a rotation) is stopped before encoding. Reveals nothing about the secret.
    secret_check: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    contact: Annotated[str, Field(min_length=1)]
    parties: Annotated[tuple[Party, ...], Field(min_length=3)]
    identifiers: IdentifierSchema
    linkage: Linkage = Linkage()
    purposes: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    budget: PrivacyBudget
    release: ReleaseRules = ReleaseRules()
    scoring: Scoring | None = None
    retention: Retention = Retention()
    #: Lawful basis, rights and the route to complain, as the published notice gives them.
    transparency: Transparency = Transparency()

    @model_validator(mode="after")
    def _parties_consistent(self) -> AgreementConfig:
        ids = [p.id for p in self.parties]
        problems = []
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            problems.append(f"party ids appear twice: {', '.join(dupes)}")
        keys = [p.public_key for p in self.parties]
        if len(set(keys)) != len(keys):
            problems.append("two parties share a public key")
        roles = [p.role for p in self.parties]
        if roles.count(Role.COORDINATOR) != 1:
            problems.append("exactly one party must have role 'coordinator'")
        if roles.count(Role.AGENCY) < 2:
            problems.append("at least two parties must have role 'agency'")
        identifier_columns = {f.column for f in self.identifiers.fields} | {self.identifiers.record_id_column}
        for attr in self.release.attributes:
            if attr.column in identifier_columns:
                problems.append(f"release attribute {attr.column} is an identifier column and may not leave a node")
        release_cols = [a.column for a in self.release.attributes]
        if len(set(release_cols)) != len(release_cols):
            problems.append("release attributes appear twice")
        if self.scoring is not None:
            agencies = set(self.agency_ids)
            if self.scoring.label_owner not in agencies:
                problems.append(f"scoring.label_owner {self.scoring.label_owner} is not an agency")
            for pid in self.scoring.features:
                if pid not in agencies:
                    problems.append(f"scoring.features names {pid}, which is not an agency")
            if self.scoring.subgroup_attribute is not None and self.scoring.subgroup_attribute not in release_cols:
                problems.append(
                    f"scoring.subgroup_attribute {self.scoring.subgroup_attribute} is not a release attribute"
                )
        hardening = self.identifiers.hardening
        clkhash_parties = [p.id for p in self.parties if p.encodings == "clkhash-json"]
        if clkhash_parties and (hardening.flip_probability or hardening.salt is not None):
            problems.append(f"{', '.join(clkhash_parties)} send clkhash JSON, which cannot carry "
                            "identifiers.hardening's flip_probability or salt (clkhash has neither)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @cached_property
    def agreement_id(self) -> str:
        """SHA-256 (hex) of the agreement's canonical JSON: stamped on every artefact."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()

    @property
    def agency_ids(self) -> list[str]:
        """Agency party ids in file order."""
        return [p.id for p in self.parties if p.role is Role.AGENCY]

    @property
    def coordinator(self) -> Party:
        """The coordinator party."""
        return next(p for p in self.parties if p.role is Role.COORDINATOR)

    def party(self, party_id: str) -> Party:
        """Look up a party by id.

        Raises:
            AgreementError: no such party.
        """
        for p in self.parties:
            if p.id == party_id:
                return p
        raise AgreementError(f"party {party_id!r} is not in agreement {self.agreement_id[:12]}"
                             f"{_did_you_mean(party_id, [p.id for p in self.parties])}; "
                             f"its parties are {', '.join(p.id for p in self.parties)}")

    def agency(self, party_id: str) -> Party:
        """Look up an agency by id; raises AgreementError if the party is not an agency."""
        if party_id not in {p.id for p in self.parties}:
            raise AgreementError(f"party {party_id!r} is not in agreement {self.agreement_id[:12]}"
                                 f"{_did_you_mean(party_id, self.agency_ids)}; "
                                 f"its agencies are {', '.join(self.agency_ids)}")
        party = self.party(party_id)
        if party.role is not Role.AGENCY:
            raise AgreementError(f"party {party_id!r} is a {party.role.value}, not an agency; "
                                 f"the agencies are {', '.join(self.agency_ids)}")
        return party

    def date_formats_for(self, party_id: str) -> tuple[str, ...]:
        """The date formats an agency's records use."""
        return self.party(party_id).date_formats or self.identifiers.date_formats


def _did_you_mean(given: str, known: list[str]) -> str:
    close = difflib.get_close_matches(given, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- migrations ---------------------------------------------------------------------------------

#: ``from_version -> function(dict) -> dict`` upgrading one step. Empty until version 2 exists.
_MIGRATIONS: dict[int, Any] = {}


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("schema_version", CURRENT_SCHEMA_VERSION)
    while isinstance(version, int) and version in _MIGRATIONS:
        data = _MIGRATIONS[version](data)
        version = data["schema_version"]
    return data


def _format_validation_error(source: str, err: ValidationError) -> str:
    # Only locations and messages: pydantic's `input` can hold values we must not echo.
    lines = []
    for item in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return f"{source}: {len(lines)} problem(s) in the agreement\n" + "\n".join(lines)


def parse_agreement(data: dict[str, Any], source: str = "<agreement>") -> AgreementConfig:
    """Validate an agreement given as a dict (already parsed from TOML).

    Raises:
        AgreementError: listing every problem by its location in the file.
    """
    try:
        return AgreementConfig.model_validate(_migrate(dict(data)))
    except ValidationError as err:
        raise AgreementError(_format_validation_error(source, err)) from None


def load_agreement(path: Path) -> AgreementConfig:
    """Read, upgrade and validate an agreement TOML file.

    Raises:
        AgreementError: the file is missing, not TOML, or invalid (every problem listed).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AgreementError(f"{path}: cannot read agreement ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AgreementError(f"{path}: not valid TOML ({exc})") from None
    return parse_agreement(data, str(path))
