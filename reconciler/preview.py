"""Preview: the request a webhook would receive, fit to show.

`reconciler render` previews one definition with a sample event, and
`reconciler fire --dry-run` the live webhooks an event would reach. Nothing is
sent and no secret is read: the request is rendered with env=None, so
`${env:NAME}` references stay as written; literal credentials in the URL, the
headers and the body are masked by the rule validate enforces; and the signature
is a placeholder naming the secret it would be computed with, never a signature.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from reconciler import credentials, jsonbody, templates
from reconciler.checks import env_references
from reconciler.envaccess import EnvAccess, EnvRefused
from reconciler.errors import ReconcilerError
from reconciler.model import WebhookSpec
from reconciler.render import EventData, RenderError, render
from reconciler.secrets import MASK, mask_header, mask_url
from reconciler.store.base import LiveWebhook

PREVIEW_DELIVERY_ID = "msg_preview"
PREVIEW_EVENT_ID = "evt_preview"
SAMPLE_NAME = "sample-rule"
SAMPLE_DESCRIPTION = "A sample event rendered by reconciler render."

# A ${env:NAME} reference in a query value, as urlencode percent-encodes it.
_ENCODED_ENV_REF = re.compile(r"%24%7Benv%3A(" + templates.ENV_NAME + r")%7D")


class PreviewError(ReconcilerError):
    """The webhook to preview cannot be found, or its event is not valid."""


@dataclass(frozen=True)
class PreviewRequest:
    """A request as it would be sent, with every secret masked or left as a reference."""

    organization: str
    webhook: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook": self.webhook,
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "body": None if self.body is None else self.body.decode("utf-8"),
        }


def preview(
    spec: WebhookSpec,
    event: EventData,
    delivery_id: str,
    timestamp: int,
    *,
    access: EnvAccess | None = None,
    organization: str | None = None,
) -> PreviewRequest:
    """The request `spec` would send for `event`, as the dispatcher builds it, masked.

    The definition goes through its canonical form first, as apply stores it and
    the dispatcher reads it back: that is what fixes the order of the headers, of
    the query parameters and of the body's keys on the wire. With `access`, a
    reference `organization` (default: the definition's) may not read is refused
    with EnvRefused, as the dispatcher would refuse to send it.
    """
    spec = as_applied(spec)
    if access is not None:
        check_env_access(spec, access, organization or spec.key[0])
    request = render(spec, event, None)
    headers = {name: mask_header(name, value) for name, value in request.headers.items()}
    headers["webhook-id"] = delivery_id
    headers["webhook-timestamp"] = str(timestamp)
    if spec.signing_secret:
        headers["webhook-signature"] = signature_placeholder(spec.signing_secret)
    organization, name = spec.key
    return PreviewRequest(
        organization, name, request.method, _shown_url(request.url), headers,
        _shown_body(request.body),
    )  # fmt: skip


def _shown_body(body: bytes | None) -> bytes | None:
    """The body as sent, unless it holds a literal credential: then with that masked."""
    if body is None:
        return None
    value = json.loads(body)
    masked, hits = credentials.scan({"body": value})
    return jsonbody.dumps(masked["body"]).encode("utf-8") if hits else body


def check_env_access(spec: WebhookSpec, access: EnvAccess, organization: str) -> None:
    """Raise EnvRefused for the first `${env:NAME}` `organization` may not read."""
    for _loc, name, _key in env_references(spec.canonical()):
        why = access.refusal(organization, name)
        if why is not None:
            raise EnvRefused(why)


def as_applied(spec: WebhookSpec) -> WebhookSpec:
    """The definition as the dispatcher sees it once applied: its canonical JSON."""
    return WebhookSpec.model_validate_json(spec.canonical_json())


def signature_placeholder(signing_secret: str) -> str:
    """One `v1,<would be signed with ${env:NAME}>` per secret, as during a rotation."""
    return " ".join(
        f"v1,<would be signed with {part if templates.is_env_ref(part) else MASK}>"
        for part in signing_secret.split()
    )


def _shown_url(url: str) -> str:
    # render() percent-encodes query values, references included; show those as
    # written, so that a reference reads as one and mask_url recognises it.
    base, sep, query = url.partition("?")
    if sep:
        url = base + sep + _ENCODED_ENV_REF.sub(r"${env:\1}", query)
    return mask_url(url)


# -- which webhook, which event -------------------------------------------------------


def find_webhook(specs: Iterable[WebhookSpec], name: str, organization: str | None) -> WebhookSpec:
    """The definition called `name`: in `organization`, or in the only one that has it."""
    specs = list(specs)
    found = [s for s in specs if s.name == name]
    organizations = sorted(s.key[0] for s in found)
    if organization is not None:
        for spec in found:
            if spec.key[0] == organization:
                return spec
        where = f" (it is in {', '.join(organizations)})" if organizations else ""
        raise PreviewError(f"no webhook {name} in organization {organization}{where}")
    if len(found) == 1:
        return found[0]
    if found:
        raise PreviewError(
            f"webhook {name} is in several organizations ({', '.join(organizations)}): "
            "choose one with --org"
        )
    close = difflib.get_close_matches(name, sorted({s.name for s in specs}), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise PreviewError(f"no webhook {name}{hint}")


def paused_matching(webhooks: Iterable[LiveWebhook], event_type: str) -> list[LiveWebhook]:
    """The live webhooks an event of this type would hold a delivery for: enabled,
    this event type, but paused (store's add_event records those as held)."""
    return [
        live
        for live in sorted(webhooks, key=lambda w: w.key)
        if live.paused_reason is not None
        and live.spec_dict().get("event") == event_type
        and live.spec_dict().get("enabled", True) is True
    ]


def matching_live(webhooks: Iterable[LiveWebhook], event_type: str) -> list[WebhookSpec]:
    """The live webhooks an event of this type queues deliveries for, by name: the
    rules of the store's add_event (enabled, not paused, this event type)."""
    matches: list[WebhookSpec] = []
    for live in sorted(webhooks, key=lambda w: w.key):
        if live.paused_reason is not None:
            continue
        raw = live.spec_dict()
        if raw.get("event") != event_type or raw.get("enabled", True) is not True:
            continue
        try:
            matches.append(WebhookSpec.model_validate(raw))
        except ValidationError:
            raise PreviewError(
                f"{live.organization}/{live.name}: the live definition is not valid any more; "
                "apply the definitions again"
            ) from None
    return matches


def preview_all(
    specs: Sequence[WebhookSpec],
    event: EventData,
    delivery_id: str,
    timestamp: int,
    *,
    access: EnvAccess | None = None,
) -> list[PreviewRequest]:
    """Every spec's request for `event`; with `access`, each checked as a webhook of
    the event's organization."""
    shown = []
    for spec in specs:
        try:
            shown.append(
                preview(
                    spec,
                    event,
                    delivery_id,
                    timestamp,
                    access=access,
                    organization=event.organization,
                )
            )
        except RenderError as exc:
            raise RenderError(f"{spec.key[0]}/{spec.name}: {exc}") from None
    return shown


# -- text -----------------------------------------------------------------------------


def request_text(request: PreviewRequest, *, title: bool = False) -> str:
    """The request as an HTTP message: request line, headers, a blank line, the body
    (JSON pretty-printed). With title, a `# organization/webhook` line first."""
    lines = [f"# {request.organization}/{request.webhook}"] if title else []
    lines.append(f"{request.method} {request.url}")
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    if request.body is not None:
        lines += ["", _pretty(request.body)]
    return "\n".join(lines)


def _pretty(body: bytes) -> str:
    text = body.decode("utf-8")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
