"""Field-level differences between two definitions; deepdiff stays behind this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    path: tuple[str | int, ...]
    old: Any  # MISSING when the field was not set
    new: Any

    @property
    def dotted(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
        return out


MISSING: Any = _MISSING


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[FieldChange]:
    """Each leaf that differs, old -> new, in a stable order."""
    if old == new:
        return []
    # deepdiff takes a tenth of a second to import: only a plan that compares pays it.
    from deepdiff import DeepDiff

    diff = DeepDiff(old, new, view="tree", ignore_order=False)
    changes: list[FieldChange] = []
    for kind, items in diff.items():
        for item in items:
            path = tuple(item.path(output_format="list"))
            if kind.endswith("_added"):
                changes.append(FieldChange(path, MISSING, item.t2))
            elif kind.endswith("_removed"):
                changes.append(FieldChange(path, item.t1, MISSING))
            else:
                changes.append(FieldChange(path, item.t1, item.t2))
    changes.sort(key=lambda c: [str(p) for p in c.path])
    return changes
