"""Test helpers: a throwaway agreement with real keys and secret, and seeded synthetic records.

Only synthetic people: real PII never enters the repository.
"""

from __future__ import annotations

import csv
import random
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pplink.agreement import AgreementConfig, parse_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.crypto import SecretBytes, load_private_key, new_secret, write_secret
from pplink.keystore import ensure_party_keys, private_key_path

AGENCIES = ("social_care", "school", "health", "police")
COLUMNS = ("record_id", "given_name", "surname", "date_of_birth", "sex", "postcode", "opt_out",
           "area", "deprivation_quintile", "age_band")

GIVEN = ["Oliver", "Amelia", "Noah", "Isla", "Muhammad", "Ava", "Zoë", "Priya", "Kacper", "Aisha", "Chidi", "Siobhán"]
SURNAMES = ["Smith", "Jones", "Taylor", "Khan", "Nowak", "O'Brien", "Okafor", "Patel", "Williams", "Brown"]


@dataclass(frozen=True)
class Setup:
    """An agreement on disk with every party's keys and the agencies' secret."""

    root: Path
    agreement_path: Path
    agreement: AgreementConfig
    keys_dir: Path
    secret_path: Path
    secret: SecretBytes

    def key_path(self, party: str) -> Path:
        return private_key_path(self.keys_dir, party)

    def key(self, party: str):  # type: ignore[no-untyped-def]
        return load_private_key(self.key_path(party))


def make_setup(root: Path, agencies: Sequence[str] = AGENCIES, edit: Callable[[str], str] | None = None) -> Setup:
    """Create keys, a default agreement (optionally edited as text) and a secret under ``root``."""
    keys_dir = root / "keys"
    public_keys, _ = ensure_party_keys(keys_dir, [*agencies, "coordinator", "auditor"])
    text = default_agreement_toml(list(agencies), public_keys)
    if edit is not None:
        text = edit(text)
    path = root / "agreement.toml"
    path.write_text(text, encoding="utf-8")
    secret_path = root / "linkage.secret"
    secret = new_secret()
    write_secret(secret, secret_path)
    return Setup(root, path, parse_agreement(tomllib.loads(text)), keys_dir, secret_path, secret)


def person(rng: random.Random, i: int) -> dict[str, str]:
    """A synthetic person as a row of the default columns."""
    return {
        "record_id": f"R{i:06d}",
        "given_name": rng.choice(GIVEN),
        "surname": rng.choice(SURNAMES),
        "date_of_birth": f"{rng.randint(2005, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "sex": rng.choice(["M", "F", "male", "Female"]),
        "postcode": (f"{rng.choice(['SW', 'M', 'LS', 'B'])}{rng.randint(1, 20)} "
                     f"{rng.randint(1, 9)}{rng.choice('ABDEFG')}{rng.choice('HJLNPQ')}"),
        "opt_out": "N",
        "area": "E06000001",
        "deprivation_quintile": str(rng.randint(1, 5)),
        "age_band": "5-10",
    }


def write_records(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> Path:
    """Write rows as a CSV with the given columns."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def publish_linkage_round(agreement: AgreementConfig, key: object, state: object, out: Path) -> Path:
    """Publish a hand-built linkage state as a match round would: a round id, its ledger, a signed manifest.

    The manifest is written by the real publisher (``pplink.round_manifest.publish_round``) and
    names the round's ledger as ``coordinator match`` names it. Returns ``out``.
    """
    from coordinator.linkage.match_round import round_ledger
    from coordinator.linkage.state import STATE_FILE, save_linkage_state
    from pplink.round_manifest import new_stage, publish_round

    ledger = round_ledger(agreement, key, state)  # type: ignore[arg-type]
    stage = new_stage(out)
    save_linkage_state(stage / STATE_FILE, state)  # type: ignore[arg-type]
    publish_round(out, stage, {"agreement_id": agreement.agreement_id, "round_id": ledger["round_id"],
                               "ledger": ledger}, key)  # type: ignore[arg-type]
    return out
