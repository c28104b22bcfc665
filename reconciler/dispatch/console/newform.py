"""The New webhook form: the product page's dialog, turned into a file to commit.

What the form holds becomes a definition's YAML, and that text is checked by the
very code `reconciler validate` runs on a file (loader.load_one), at the path it
is to be committed at; the body by the product page's JSON validator
(jsonbody.parse_json_text: strict JSON or its relaxed form), so a body's problem
is located by line and column within the body as typed. The preview is
`reconciler render`'s (preview.preview) for a sample event. Nothing is written to
the live state: the result is text, for git.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import events, jsonbody, preview
from reconciler.export import definition_yaml
from reconciler.loader import load_one
from reconciler.model import NAME_PATTERN, Event, Method, WebhookSpec
from reconciler.render import RenderError
from reconciler.store.base import LiveWebhook

EVENTS = [e.value for e in Event]
METHODS = [m.value for m in Method]
PLACEHOLDERS = ("{{time}}", "{{name}}", "{{description}}")
DEFAULT_BODY = (
    "{\n  text: 'The rule {{name}} was violated at: {{time}}. Description {{description}}.'\n}"
)
FIELDS = ("organization", "name", "event", "method", "url", "headers", "body", "description")


# The form's labels, for the problems it shows.
LABELS = {
    "organization": "Organization",
    "name": "Name",
    "event": "Event type",
    "method": "Request method",
    "url": "Endpoint",
    "headers": "Headers",
    "body": "Body",
    "description": "Description",
    "file": "The file",
}
_PLACE_IN_BODY = re.compile(r" \(line \d+, column \d+ of the body\)")


@dataclass(frozen=True)
class FormProblem:
    field: str  # the form's field it is about (body, url, ...), or "file"
    line: int  # within the field's own text (`within_field`), else the YAML file's
    column: int
    message: str  # without the field's name: the label says it
    within_field: bool = False

    @property
    def text(self) -> str:
        """As the page shows it: `Body, line 3, column 3: not valid JSON: ...`."""
        label = LABELS.get(self.field, self.field)
        if self.within_field:
            return f"{label}, line {self.line}, column {self.column}: {self.message}"
        return f"{label}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "line": self.line,
            "column": self.column,
            "in": "field" if self.within_field else "file",
            "message": self.message,
            "text": self.text,
        }


@dataclass
class FormResult:
    values: dict[str, str]
    problems: list[FormProblem] = field(default_factory=list)
    yaml: str | None = None
    path: str | None = None
    request: str | None = None  # the preview, as an HTTP message

    @property
    def filename(self) -> str:
        return f"{self.values.get('name') or 'webhook'}.yaml"

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "problems": [p.as_json() for p in self.problems],
            "yaml": self.yaml,
            "path": self.path,
            "request": self.request,
        }


def form_values(form: Mapping[str, str], organizations: Sequence[str]) -> dict[str, str]:
    """The form's fields, defaulted as the empty form shows them."""
    values = {name: form.get(name, "") for name in FIELDS}
    values["organization"] = values["organization"] or (organizations[0] if organizations else "")
    values["event"] = values["event"] or EVENTS[0]
    values["method"] = values["method"] or "POST"
    return values


def check(form: Mapping[str, str], may_use: Sequence[str] | None) -> FormResult:
    """The form checked as `validate` checks a file; `may_use`: the organizations
    the signed-in token holds (None: every one)."""
    values = form_values(form, list(may_use or []))
    result = FormResult(values)
    organization = values["organization"].strip()
    if not re.fullmatch(NAME_PATTERN, organization):
        result.problems.append(FormProblem("organization", 1, 1, "give the organization's name"))
        return result
    if may_use is not None and organization not in may_use:
        result.problems.append(
            FormProblem(
                "organization", 1, 1, f"organization {organization} is out of this token's scope"
            )
        )
        return result
    data: dict[str, Any] = {
        "name": values["name"].strip(),
        "event": values["event"],
        "method": values["method"],
        "url": values["url"].strip(),
    }
    headers = _headers(values["headers"], result)
    if headers:
        data["headers"] = headers
    body_text = values["body"]
    if body_text.strip():
        try:
            data["body"] = jsonbody.parse_json_text(body_text)
        except jsonbody.BodyError as exc:
            message = _PLACE_IN_BODY.sub("", exc.message)
            result.problems.append(FormProblem("body", exc.line or 1, exc.col or 1, message, True))
    if values["description"].strip():
        data["description"] = values["description"].strip()
    if result.problems:
        return result
    result.path = f"webhooks.d/{organization}/{data['name'] or 'webhook'}.yaml"
    text = definition_yaml(data)
    definition, problems = load_one(result.path, text.encode("utf-8"), organization)
    result.problems += [
        FormProblem(
            _field_of(p.field),
            p.location.line,
            p.location.col,
            _without_field(p.message, p.field),
        )
        for p in problems
        if p.severity == "error"
    ]
    if definition is None or result.problems:
        return result
    result.yaml = text
    try:
        result.request = preview.request_text(_preview(definition.spec))
    except RenderError as exc:
        result.problems.append(FormProblem("body", 1, 1, f"cannot render: {exc}"))
    return result


def _field_of(dotted: str | None) -> str:
    """The form's field a problem of the file is about (`headers.Authorization`:
    headers), or "file"."""
    name = (dotted or "").split(".")[0]
    return name if name in LABELS else "file"


def _without_field(message: str, dotted: str | None) -> str:
    """The message without a leading `url: ` its label already says
    (`headers.Authorization: ...` becomes `Authorization: ...`)."""
    if not dotted:
        return message
    name, _, rest = dotted.partition(".")
    for prefix in (dotted, name):
        if message.startswith(prefix + ": "):
            message = message[len(prefix) + 2 :]
            return f"{rest}: {message}" if prefix == dotted and rest else message
    return message


def _headers(text: str, result: FormResult) -> dict[str, str]:
    """`Name: value` lines, as the product page's header rows."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            result.problems.append(
                FormProblem("headers", number, 1, "write each header as Name: value", True)
            )
            continue
        headers[name.strip()] = value.strip()
    return headers


def preview_live(live: LiveWebhook) -> str:
    """The request a live webhook would send for a sample event, as `render` shows it."""
    return preview.request_text(_preview(WebhookSpec.model_validate(live.spec_dict())))


def _preview(spec: Any) -> preview.PreviewRequest:
    record = events.checked_event(
        {
            "type": spec.event.value,
            "organization": spec.key[0],
            "name": preview.SAMPLE_NAME,
            "description": preview.SAMPLE_DESCRIPTION,
            "id": preview.PREVIEW_EVENT_ID,
        },
        now=datetime.now(UTC).replace(microsecond=0),
    )
    return preview.preview(
        spec, events.event_data(record), preview.PREVIEW_DELIVERY_ID, int(time.time())
    )
