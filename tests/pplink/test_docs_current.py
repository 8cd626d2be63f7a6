"""Generated docs stay true to the code: error codes and the agreement's JSON Schema."""

from __future__ import annotations

from pathlib import Path

from pplink._docs import render_agreement_schema, render_error_docs

DOCS = Path(__file__).resolve().parents[2] / "docs"
HINT = "regenerate with: uv run python -m pplink._docs"


def test_error_reference_is_current() -> None:
    assert (DOCS / "errors.md").read_text(encoding="utf-8") == render_error_docs(), HINT


def test_agreement_schema_is_current() -> None:
    assert (DOCS / "agreement.schema.json").read_text(encoding="utf-8") == render_agreement_schema(), HINT


def test_error_reference_lists_every_code() -> None:
    from pplink.errors import ERROR_HELP

    text = render_error_docs()
    assert all(f"PPL{code}" in text for code in ERROR_HELP)
