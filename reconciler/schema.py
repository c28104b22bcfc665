"""The JSON Schema of a definition file, generated from the model."""

from __future__ import annotations

import json
from typing import Any

from reconciler.model import WebhookSpec

SCHEMA_ID = "https://reconciler.dev/schemas/webhook.schema.json"


def webhook_schema() -> dict[str, Any]:
    schema = WebhookSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def webhook_schema_text() -> str:
    return json.dumps(webhook_schema(), indent=2, ensure_ascii=False) + "\n"
