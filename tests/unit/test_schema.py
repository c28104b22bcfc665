"""The committed JSON Schema: generated from the model, and true to the examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, ValidationError

from reconciler.schema import webhook_schema_text
from reconciler.yamlsource import YamlDocument, load_document

TESTS = Path(__file__).resolve().parents[1]
SCHEMA_FILE = TESTS.parent / "schemas" / "webhook.schema.json"
EXAMPLES = TESTS / "examples"
VALID_FILES = sorted((EXAMPLES / "valid").rglob("*.yaml")) + sorted(
    p
    for p in (TESTS.parent / "webhooks.d").rglob("*.yaml")
    if p.name != "shared-env.yaml"  # the shared list of variables: not a definition
)


def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def _data(path: Path) -> Any:
    """The file's data exactly as written (merge keys applied, nothing defaulted)."""
    doc = load_document(str(path), path.read_bytes())
    assert isinstance(doc, YamlDocument), str(doc)
    return doc.data


def test_committed_schema_matches_the_model() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == webhook_schema_text(), (
        "schemas/webhook.schema.json is out of date with reconciler/model.py; regenerate it "
        "with: reconciler schema > schemas/webhook.schema.json"
    )


def test_committed_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == {"name", "event", "method", "url"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.relative_to(TESTS.parent).as_posix())
def test_valid_example_satisfies_the_schema(path: Path) -> None:
    errors = [e.message for e in _validator().iter_errors(_data(path))]
    assert errors == []


@pytest.mark.parametrize(
    ("case", "keyword", "where"),
    [
        ("unknown-key-typo", "additionalProperties", []),
        ("unknown-key-no-match", "additionalProperties", []),
        ("missing-url", "required", []),
        ("missing-name", "required", []),
        ("unknown-event", "enum", ["event"]),
        ("lowercase-method", "enum", ["method"]),
        ("enabled-not-boolean", "type", ["enabled"]),
        ("headers-a-list", "type", ["headers"]),
        ("header-value-number", "type", ["headers", "X-Retries"]),
        ("timeout-bad-unit", "pattern", ["timeout"]),
        ("rate-limit-bad", "pattern", ["rate_limit"]),
        ("max-in-flight-zero", "minimum", ["max_in_flight"]),
        ("max-in-flight-too-many", "maximum", ["max_in_flight"]),
        ("max-in-flight-text", "type", ["max_in_flight"]),
        ("name-upper-case", "pattern", ["name"]),
        ("retry-unknown-key", "additionalProperties", ["retry"]),
        ("retry-bad-schedule-entry", "pattern", ["retry", "schedule", 1]),
    ],
)
def test_invalid_example_is_rejected_by_the_schema(
    case: str, keyword: str, where: list[str | int]
) -> None:
    data = _data(EXAMPLES / "invalid" / case / "acme" / "hook.yaml")
    errors = list(_validator().iter_errors(data))
    assert errors, f"the schema accepts {case}"
    # optional fields are anyOf [value, null]: the reason sits in the error's context
    reasons = [(e.validator, list(e.absolute_path)) for e in _flatten(errors)]
    assert (keyword, where) in reasons


def _flatten(errors: list[ValidationError]) -> list[ValidationError]:
    flat = []
    for error in errors:
        flat.append(error)
        flat += _flatten(list(error.context or []))
    return flat
