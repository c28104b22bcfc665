"""Problems found in definitions, carried as values with their source location."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What ends a line for str.splitlines(), terminals and editors. A key or value quoted
# in a message may hold one; it is written escaped, so a problem stays one line.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


@dataclass(frozen=True, order=True)
class Location:
    path: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass(frozen=True, order=True)
class Problem:
    location: Location
    message: str
    severity: Literal["error", "warning"] = "error"
    # The field it is about, dotted (`body.text`, `headers.Authorization`), when one is.
    field: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.location}: {prefix}{self.message}".translate(_LINE_BREAKS)

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.location.path,
            "line": self.location.line,
            "column": self.location.col,
            "field": self.field,
            "severity": self.severity,
            "message": self.message,
        }
