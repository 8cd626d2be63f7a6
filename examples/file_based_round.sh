#!/usr/bin/env bash
# A whole file-based linkage round on synthetic data, each party's step in turn.
# Run from an empty folder:  bash path/to/examples/file_based_round.sh
# (a test runs it, so it stays true to the code).
set -euo pipefail

# Synthetic records for three agencies (truth.csv is for evaluation only).
pplink synth --out data --people 400 --agencies social_care,school,health --seed 1

# The agencies' secret, then the agreement with every party's keys and the secret's check value.
pplink secret new -o agencies/linkage.secret
pplink agreement init --parties social_care,school,health --keys-dir keys --secret agencies/linkage.secret -o agreement.toml

# Each agency encodes behind its firewall; only the .enc file leaves.
for agency in social_care school health; do
  pplink node encode --agreement agreement.toml --party "$agency" --secret agencies/linkage.secret \
    --key "keys/$agency.key" "data/$agency.csv" -o "nodes/$agency/$agency.enc" --skip-invalid
done

# The coordinator matches (its calibration release starts the round's ledger,
# linkage/coordinator/ledger.jsonl), then releases one DP aggregate onto that ledger.
pplink coordinator match --agreement agreement.toml --key keys/coordinator.key \
  nodes/social_care/social_care.enc nodes/school/school.enc nodes/health/health.enc -o linkage
pplink coordinator release --agreement agreement.toml --ledger linkage/coordinator/ledger.jsonl --linkage linkage \
  --key keys/coordinator.key --query overlap --epsilon 0.5

# Each agency resolves its own pseudonym map locally.
for agency in social_care school health; do
  pplink node resolve --agreement agreement.toml --party "$agency" \
    --tokens "nodes/$agency/$agency.tokens" --map "linkage/$agency.map.csv" \
    -o "nodes/$agency/$agency.entities.csv"
done

# Quality against the synthetic truth, the auditor's verdict, and the report.
pplink eval linkage --truth data/truth.csv nodes/social_care nodes/school nodes/health
pplink audit verify --agreement agreement.toml --ledger linkage/coordinator/ledger.jsonl
pplink report --agreement agreement.toml --ledger linkage/coordinator/ledger.jsonl -o report.html
