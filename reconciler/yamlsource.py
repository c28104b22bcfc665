"""Read one YAML document safely, keeping where each value came from.

libyaml (PyYAML's C parser) builds the node tree; this module turns nodes into
plain Python data itself, so that it can refuse what PyYAML would accept
silently: duplicate keys, alias bombs, non-string keys, exotic tags. The node
tree is kept, so an error found later (by pydantic) can be traced back to the
line and column of the offending key or value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.problems import Location, Problem

try:  # libyaml is bundled with PyYAML's wheels; the pure-Python parser is the fallback
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000  # values built, counting every expansion of an alias
MAX_DEPTH = 64

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _Composer(_Loader):
    """The loader, with the tags of short plain scalars remembered.

    libyaml asks `resolve` for the tag of every scalar it composes; PyYAML's answer
    for a plain one tries the implicit resolvers' patterns for its first character,
    and definitions repeat the same keys and words file after file. The answer
    depends on the text alone (and the resolver table, which is checked), so it is
    kept, for texts up to _TAG_TEXT_MAX characters and at most _TAGS_MAX of them.
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if (
            kind is ScalarNode
            and implicit[0]
            and len(value) <= _TAG_TEXT_MAX
            and not self.yaml_path_resolvers
        ):
            table = self.yaml_implicit_resolvers
            if _tags_for[0] is not table:
                _tags.clear()
                _tags_for[0] = table
            tag = _tags.get(value)
            if tag is None:
                if len(_tags) >= _TAGS_MAX:
                    _tags.clear()
                # types-PyYAML leaves BaseResolver.resolve unannotated (here and below).
                tag = _tags[value] = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
            return tag
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]


_TAG_TEXT_MAX = 64
_TAGS_MAX = 10_000
_tags: dict[str, str] = {}
_tags_for: list[object] = [None]  # the resolver table _tags was filled from


class _Refused(Exception):
    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


@dataclass
class YamlDocument:
    """The data of one file and the node tree it came from."""

    path: str
    data: Any
    root: Node
    # Problems found while building the data that did not stop it: each duplicate
    # key (its first value is kept), so the file's other problems still show.
    problems: list[Problem] = field(default_factory=list)

    def locate(self, loc: Sequence[str | int], *, key: bool = False) -> Location:
        """Where the value at `loc` is written; with key=True, where its key is.

        A path that does not exist (a missing field) resolves to the nearest
        mapping that exists, which is where the field should have been.
        """
        node: Node = self.root
        key_node: Node | None = None
        for part in loc:
            child = _child(node, part)
            if child is None:
                return self._at(node)
            key_node, node = child
        if key and key_node is not None:
            return self._at(key_node)
        return self._at(node)

    def _at(self, node: Node) -> Location:
        return Location(self.path, node.start_mark.line + 1, node.start_mark.column + 1)


def _child(node: Node, part: str | int) -> tuple[Node | None, Node] | None:
    if isinstance(node, MappingNode):
        text = str(part)
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == text:
                return k, v
    elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


def load_document(path: str, raw: bytes) -> YamlDocument | Problem:
    """Parse one file's bytes into a YamlDocument, or return the first problem."""
    if len(raw) > MAX_FILE_BYTES:
        return Problem(
            Location(path, 1, 1),
            f"file is too large ({len(raw):,} bytes; a definition may have at most "
            f"{MAX_FILE_BYTES:,})",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return Problem(
            Location(path, line, col),
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} cannot be decoded)",
        )
    if text.startswith("\ufeff"):
        text = text[1:]
    loader = _Composer(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        return _syntax_problem(path, text, exc)
    except yaml.reader.ReaderError as exc:
        return _reader_problem(path, text, exc)
    except yaml.YAMLError as exc:  # errors without a mark
        return Problem(Location(path, 1, 1), f"YAML syntax error: {' '.join(str(exc).split())}")
    finally:
        loader.dispose()
    if root is None:
        return Problem(Location(path, 1, 1), "file is empty: expected a webhook definition")
    builder = _Builder()
    try:
        data = builder.build(root, 0)
    except _Refused as exc:
        return _at(path, exc.node, exc.message)
    found = [_at(path, node, message) for node, message in builder.duplicates]
    return YamlDocument(path, data, root, found)


def _at(path: str, node: Node, message: str) -> Problem:
    mark = node.start_mark
    return Problem(Location(path, mark.line + 1, mark.column + 1), message)


def _syntax_problem(path: str, text: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "YAML syntax error"
    if mark is not None and text[mark.index : mark.index + 1] == "\t":
        message = "tab character in indentation: YAML indents with spaces only"
    elif "expected a single document" in (exc.context or "") + problem:
        message = "more than one YAML document: a file holds one webhook definition"
    else:
        context = f" ({exc.context})" if exc.context else ""
        message = f"YAML syntax error: {problem}{context}{_hint(text, exc)}"
    return Problem(Location(path, line, col), message)


# `key: value` on one line, the key plain or quoted, after any indentation or `- `.
_KEY_VALUE = re.compile(
    r"""^\s*(?:-\s+)?(?:"[^"]*"|'[^']*'|[^\s#'"{\[][^:#]*?):[ \t]+(?P<value>.*?)\s*$"""
)


def _hint(text: str, exc: yaml.MarkedYAMLError) -> str:
    """Words for the mistakes people make most, where libyaml's own are cryptic:
    an unquoted value that YAML reads as something else, a quote never closed."""
    if exc.context == "while scanning a quoted scalar" and exc.context_mark is not None:
        opened = exc.context_mark
        return (
            f"; the quote opened at line {opened.line + 1}, column {opened.column + 1} "
            "is never closed"
        )
    lines = text.splitlines()
    marks = [m for m in (exc.context_mark, exc.problem_mark) if m is not None]
    for mark in marks:
        if mark.line >= len(lines):
            continue
        line = lines[mark.line]
        found = _KEY_VALUE.match(line)
        if found is None:
            continue
        value = found["value"]
        why = _unquoted_why(value)
        if why:
            key_part = line[: found.start("value")].strip()
            return f"; {why}: quote the whole value, as in {key_part} {quoted(value)}"
    return ""


def _unquoted_why(value: str) -> str | None:
    """Why an unquoted value does not read as text, or None when it would (or is quoted)."""
    if not value or value[0] in "'\"":
        return None
    if value.startswith("{{") or (value[0] in "{[" and "{{" in value):
        return "a value starting with {{ is read as a YAML mapping, not as a placeholder"
    if value[0] in "{[":
        return f"a value starting with {value[0]} is read as a YAML flow collection"
    if value[0] in "@`":
        return f"YAML reserves {value[0]} at the start of a value"
    if value[0] == "*":
        return "a value starting with * is read as a YAML alias"
    if ": " in value or value.endswith(":"):
        return "a colon followed by a space inside a value starts a YAML mapping"
    return None


def _flow_hint(node: MappingNode) -> str:
    """The hint for `text: {{time}}`, which YAML reads as a mapping keyed by a mapping."""
    if node.flow_style and isinstance(node.value[0][0], MappingNode):
        return (
            "; a value starting with {{ is read as a YAML mapping, not as a placeholder: "
            'quote the whole value, as in "{{time}}"'
        )
    return ""


def quoted(value: str) -> str:
    """VALUE as a double-quoted YAML scalar."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _reader_problem(path: str, text: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML does not allow (NUL, most other control characters), at its
    line and column; the error's own text spans two lines and names no file."""
    if _Loader.__name__.startswith("C"):  # libyaml counts UTF-8 bytes
        before = text.encode("utf-8")[: exc.position].decode("utf-8", errors="ignore")
    else:
        before = text[: exc.position]
    breaks = list(_YAML_LINE_BREAK.finditer(before))  # counted as libyaml's marks count
    line = len(breaks) + 1
    col = len(before) - (breaks[-1].end() if breaks else 0) + 1
    char = exc.character
    shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
    return Problem(
        Location(path, line, col),
        f"YAML syntax error: unacceptable character {shown}: {exc.reason}",
    )


# PyYAML's constructors for bool, int and float scalars: they keep no state, so one
# serves every document.
_SCALARS = yaml.constructor.SafeConstructor()


class _Builder:
    """Nodes to plain data; counts every value it builds, so aliases cannot explode."""

    def __init__(self) -> None:
        self.budget = MAX_NODES
        self._scalar = _SCALARS
        self.duplicates: list[tuple[Node, str]] = []

    def build(self, node: Node, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _Refused(
                node,
                f"document expands to more than {MAX_NODES:,} values "
                "(an alias bomb or a runaway anchor); refused",
            )
        if depth > MAX_DEPTH:
            raise _Refused(node, f"nested more than {MAX_DEPTH} levels deep; refused")
        if isinstance(node, ScalarNode):
            return self._scalar_value(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                raise _Refused(node, f"unsupported YAML tag {_short(node.tag)}")
            return [self.build(item, depth + 1) for item in node.value]
        if isinstance(node, MappingNode):
            if node.tag != _MAP:
                raise _Refused(node, f"unsupported YAML tag {_short(node.tag)}")
            return self._mapping(node, depth)
        raise _Refused(node, "unsupported YAML node")  # pragma: no cover

    def _mapping(self, node: MappingNode, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, Node] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.update(self._merge(value_node, depth))
                continue
            if not isinstance(key_node, ScalarNode):
                raise _Refused(key_node, "mapping keys must be plain text" + _flow_hint(node))
            key = key_node.value
            if key in seen:
                first = seen[key].start_mark
                self.duplicates.append(
                    (
                        key_node,
                        f"duplicate key '{key}' (first defined at line {first.line + 1}); "
                        "each key may appear once",
                    )
                )
                continue
            seen[key] = key_node
            if (
                type(value_node) is ScalarNode
                and value_node.tag == _STR
                and self.budget > 0
                and depth < MAX_DEPTH
            ):
                # What build() would do for it, without the call: most values are text.
                self.budget -= 1
                result[key] = value_node.value
            else:
                result[key] = self.build(value_node, depth + 1)
        if merged:
            return {**merged, **result}
        return result

    def _merge(self, node: Node, depth: int) -> dict[str, Any]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, MappingNode):
                raise _Refused(source, "a merge key (<<) takes a mapping or a list of mappings")
            merged.update(self.build(source, depth + 1))
        return merged

    def _scalar_value(self, node: ScalarNode) -> Any:
        tag = node.tag
        if tag in (_STR, _TIMESTAMP):
            # Dates stay text: definitions are JSON-shaped and must round-trip.
            return node.value
        if tag == _NULL:
            return None
        construct = _CONSTRUCTORS.get(tag)
        if construct is None:
            raise _Refused(node, f"unsupported YAML tag {_short(tag)}")
        try:
            return construct(self._scalar, node)
        except (ValueError, KeyError, yaml.YAMLError):
            # Only an explicit tag (!!int abc) can get here: implicit ones matched already.
            raise _Refused(node, f"{node.value!r} is not a valid {_short(tag)}") from None


_CONSTRUCTORS = {
    _BOOL: yaml.constructor.SafeConstructor.construct_yaml_bool,
    _INT: yaml.constructor.SafeConstructor.construct_yaml_int,
    _FLOAT: yaml.constructor.SafeConstructor.construct_yaml_float,
}


def _short(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")
