"""The commented default agreement that ``pplink agreement init`` writes.

Kept apart from :mod:`pplink.agreement` because it is presentation (a TOML text with comments),
not validation. The template is validated by the same loader every other agreement goes through,
and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_AREAS", "DEFAULT_FEATURES", "default_agreement_toml"]

#: Local-authority-like area codes used by `pplink synth` and the default release attributes.
DEFAULT_AREAS = tuple(f"E0600000{i}" for i in range(1, 9))
AGE_BANDS = ("0-4", "5-10", "11-15", "16-17", "18+")
#: Feature columns per well-known agency; other agencies get `<id>_contacts`, `<id>_flags`.
DEFAULT_FEATURES: Mapping[str, tuple[str, ...]] = {
    "social_care": ("referrals", "prior_assessments"),
    "school": ("attendance_pct", "exclusions"),
    "health": ("ae_visits", "missed_appointments"),
    "police": ("callouts", "dv_incidents"),
}


def features_for(agency: str) -> tuple[str, ...]:
    """Feature columns an agency contributes to scoring by default."""
    return DEFAULT_FEATURES.get(agency, (f"{agency}_contacts", f"{agency}_flags"))


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


#: The template's ``linkage.calibration_epsilon``: see docs/privacy-accounting.md for what it costs
#: and how far its noise moves the published estimates.
DEFAULT_CALIBRATION_EPSILON = 1.0


def default_agreement_toml(
    agencies: Sequence[str],
    public_keys: Mapping[str, str],
    *,
    coordinator: str = "coordinator",
    auditor: str = "auditor",
    name: str = "Early help linkage pilot",
    secret_check: str | None = None,
) -> str:
    """Render a valid, commented default agreement for the given agencies.

    Args:
        agencies: agency party ids, at least two.
        public_keys: ``ed25519:`` public key text for every agency, the coordinator and the auditor.
        coordinator: the coordinator's party id.
        auditor: the auditor's party id.
        name: a human name for the linkage.
        secret_check: ``pplink secret check`` of the agencies' secret, if it exists already.

    Returns:
        TOML text.
    """
    label_owner = "social_care" if "social_care" in agencies else agencies[0]
    parties = []
    for pid in agencies:
        parties.append(f'[[parties]]\nid = "{pid}"\nrole = "agency"\npublic_key = "{public_keys[pid]}"\n'
                       f'# How a family opts out at this agency (printed in the notice).\n'
                       f'opt_out_how = "TO BE COMPLETED: whom to tell at {pid}, and how"\n')
    parties.append(f'[[parties]]\nid = "{coordinator}"\nrole = "coordinator"\n'
                   f'public_key = "{public_keys[coordinator]}"\n')
    parties.append(f'[[parties]]\nid = "{auditor}"\nrole = "auditor"\npublic_key = "{public_keys[auditor]}"\n')
    check = (f'# Check value of the agencies\' linkage secret (`pplink secret check`): a node holding another\n'
             f'# secret is stopped. Rotating the secret means a new value here, so a new agreement id.\n'
             f'secret_check = "{secret_check}"\n') if secret_check else ""
    features = "\n".join(f"{pid} = {_toml_list(features_for(pid))}" for pid in agencies)
    return f'''# pplink linkage agreement. Every party signs up to this file; its SHA-256 (the agreement id)
# is stamped on every artefact, and anything made under another agreement is refused.
# Check it with:  pplink agreement check THIS_FILE
schema_version = 1
name = "{name}"
{check}# Who families and staff can contact about this linkage.
contact = "Information governance lead, data.protection@example.org"
# What the linkage may be used for. Nothing else.
purposes = [
    "Identify families who may benefit from early help, for a practitioner's second look",
    "Measure how well agency records link, and for whom linkage works less well",
]

# ---- parties: agencies hold records and the linkage secret; the coordinator never does ----
{chr(10).join(parties)}
# ---- identifiers: columns each agency's file must have, and how they are encoded ----
[identifiers]
record_id_column = "record_id"
# Opt-outs fail closed. Every file must have this column (`opt_out_column = false` says there is
# none). Rows holding an opt-out value are never encoded (and are counted); rows holding an opt-in
# value are encoded; any other value refuses the row. Agencies whose exports use other words map
# them in their node settings ([opt_out_values]), without changing this agreement.
opt_out_column = "opt_out"
opt_out_values = ["y", "yes", "true", "1"]
opt_in_values = ["n", "no", "false", "0", ""]
# Accepted date formats. Each file's date columns are read in the one format their values show
# (DD/MM against MM/DD is never guessed: an ambiguous file is refused). An agency states another
# format in its node settings (date_format), or with `date_formats` in its [[parties]] entry.
date_formats = ["%Y-%m-%d", "%d/%m/%Y"]
# Bloom filter length in bits (clkhash `l`).
filter_bits = 1024
# A row needs at least this many non-empty identifier values to be linkable; fewer: rejected.
min_fields = 3

[identifiers.hardening]
# Measured in docs/hardening.md (`pplink attack sweep` reproduces it). Without hardening the
# coordinator, holding every agency's encodings, mined first names back from 13% of synthetic
# records. XOR folding (1) hashes into twice the filter and folds its halves together: it
# stopped the frequency and pattern-mining attacks at no loss of linkage. Setting 0 turns it off.
xor_folds = 1
# Also available, off by default (see docs/hardening.md before turning them on):
#   flip_probability = 0.02   keyed random bit flips (BLIP); costs recall, did not stop the attacks
#   salt = {{ source = "date_of_birth", fields = ["given_name", "surname"], prefix = 4 }}
#       hashes names with the year of birth: blunts even an attacker holding the plaintext, but
#       records whose years differ or lack a date of birth then never link on names

# A missing value in a `required = true` field rejects the row; optional fields may be empty.
# bits_per_token weights each field; ngram 2 = bigrams; dates use positional unigrams. The weights
# keep about a third of the bits set, so strangers score low.
[[identifiers.fields]]
column = "given_name"
# "given_name": a name whose known diminutives (Bob, Liz, Kate) hash as the formal name (Robert,
# Elizabeth, Katherine) at every agency; the table ships with pplink (docs/agreement.md).
kind = "given_name"
bits_per_token = 15
required = false

[[identifiers.fields]]
column = "surname"
kind = "name"
bits_per_token = 15
required = false

[[identifiers.fields]]
column = "date_of_birth"
# "birth_date": hashed as YYYYMMDD and then its month and day once more, the smaller first, so a
# record whose day and month were swapped (03/11 for 11/03) still agrees on four of twelve digits.
kind = "birth_date"
bits_per_token = 10
ngram = 1
positional = true
required = false

[[identifiers.fields]]
column = "sex"
kind = "sex"
bits_per_token = 20
ngram = 1
required = false

[[identifiers.fields]]
column = "postcode"
kind = "postcode"
bits_per_token = 8
required = false

# ---- linkage ----
[linkage]
# Dice similarity at or above which two encodings may be linked. "auto": every round fits the
# similarity distribution of its own pairs (no truth needed), picks the threshold with the best
# estimated F1 and reports its estimated precision and recall. A number fixes it (0.75 suits
# xor_folds = 1). The threshold is not part of what is encoded: `coordinator match --threshold`
# may set it for one round within the bounds, without re-encoding.
threshold = "auto"
# Optional: the range a round's threshold may take, and a precision the choice must reach.
#   threshold_bounds = [0.6, 0.9]
#   precision_floor = 0.995
# The privacy loss of each round's DP release of its linked pairs' similarities (the `link-scores`
# ledger entry), from which the estimated precision and recall that leave the coordinator are
# derived. Under zcdp it is this release alone at the budget's delta (it composes as rho).
# Remove it to publish no estimate.
calibration_epsilon = {DEFAULT_CALIBRATION_EPSILON:g}
# Continue a round without an agency that dropped out (it is named in the result)?
allow_missing_parties = false

# ---- privacy budget for every release, all releases together ----
[budget]
epsilon = 4.0
delta = 1e-6
# "zcdp": zero-concentrated DP, converted to (epsilon, delta); "pure": epsilon-DP only.
accounting = "zcdp"

# ---- what the coordinator may release ----
[release]
# Noisy counts below this are suppressed (shown as "< min_cell_size"), never released.
min_cell_size = 10

[[release.attributes]]
column = "area"
values = {_toml_list(DEFAULT_AREAS)}

[[release.attributes]]
column = "deprivation_quintile"
values = ["1", "2", "3", "4", "5"]

[[release.attributes]]
column = "age_band"
values = {_toml_list(AGE_BANDS)}

# ---- scoring: who holds the outcome, which features each agency keeps and uses ----
[scoring]
label_owner = "{label_owner}"
label_column = "outcome"
subgroup_attribute = "deprivation_quintile"
holdout_share = 0.2

[scoring.features]
{features}

# ---- what the published notice (`pplink agreement explain`) tells families about the law ----
# Word these with your data protection officers: `pplink agreement check` warns while any is empty
# or still a placeholder (TO BE COMPLETED, example.org, <...>).
[transparency]
controller = "TO BE COMPLETED: the organisations responsible for this linkage in law"
lawful_basis = "TO BE COMPLETED: the lawful basis, e.g. UK GDPR Article 6(1)(e) public task under <statute>"
rights = [
    "You can ask each agency for a copy of the information it holds about you.",
    "You can ask an agency to correct details that are wrong.",
    "You can object to your records being linked; the agency then marks them as opted out.",
    "You can ask an agency to delete links and scores about you.",
]
complaints = """\\
If you are unhappy with an agency's answer, you can complain to the Information \\
Commissioner's Office (ICO): ico.org.uk/make-a-complaint, or call 0303 123 1113."""

# ---- retention, in days ----
[retention]
encodings_days = 30
linkage_days = 365
ledger_days = 2555
'''
