"""Times in the command line's JSON: ISO 8601 in UTC, whole seconds, with a Z.

The store keeps moments as Unix time (floats, for ordering and arithmetic) and the
HTTP API answers them so, as its OpenAPI document says; every JSON document the CLI
prints gives them as text instead, one convention across commands
(docs/cli.md#json-output). A moment is a number under a key that ends in `_at`,
outside what a definition holds (its body or query may have such keys of its own).
"""

from __future__ import annotations

from typing import Any

from reconciler.render import utc

# Keys whose values are definitions, their fields or a plan of them: their content
# is the admins' own, shown as written, never taken for a moment. (A plan's own
# times are text already.)
CONTENT = frozenset({"before", "after", "spec", "body", "query", "headers", "old", "new", "plan"})


def with_iso_times(document: Any) -> Any:
    """`document` with every number under a key ending in `_at`, at any depth but
    inside CONTENT, as utc() text; everything else as it is."""
    if isinstance(document, dict):
        return {
            key: (
                utc(value)
                if key.endswith("_at")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                else value
                if key in CONTENT
                else with_iso_times(value)
            )
            for key, value in document.items()
        }
    if isinstance(document, list):
        return [with_iso_times(item) for item in document]
    return document
