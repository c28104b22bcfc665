"""A request as it was sent, fit to keep: what `deliveries show` and the API's
delivery view show beside each attempt's response.

It is the rendered request itself (method, URL, headers, body), so it is what went
out, not a rendering redone later from a definition that may have changed since.
Secrets never reach the state: every resolved `${env:NAME}` value in the URL and
headers is put back as its reference, then literal credentials are masked by the
rule every page uses (secrets.py: Authorization and other credential-named headers,
user info, secret query values and secret-bearing paths in a URL). The body takes
no `${env:}` reference (render.py), only the definition's text and the event's
values, and is kept as sent, up to BODY_LIMIT characters.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from reconciler.render import RenderedRequest, Renderer
from reconciler.secrets import mask_header, mask_url
from reconciler.store.queue import SentRequest

BODY_LIMIT = 16_384  # characters of a body kept; the rest is cut, and said to be
# Values shorter than this are not taken for secrets: putting a reference back in
# place of every "1" or "on" would garble the URL without hiding anything.
SHORTEST_SECRET = 4


def secret_values(renderer: Renderer, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """Each resolved `${env:NAME}` value the definition reads, with its reference,
    longest first (a value inside a longer one goes after it)."""
    return sorted(
        (
            (value, f"${{env:{name}}}")
            for name in renderer.references
            if len(value := env.get(name, "")) >= SHORTEST_SECRET
        ),
        key=lambda pair: -len(pair[0]),
    )


def unresolved(text: str, values: list[tuple[str, str]]) -> str:
    """`text` with every secret value of `values` put back as its reference: for what
    a receiver answered too, which may echo the request (its Authorization header,
    its URL) back."""
    for value, reference in values:
        if value in text:
            text = text.replace(value, reference)
    return text


def as_sent(
    request: RenderedRequest,
    renderer: Renderer,
    env: Mapping[str, str],
    values: list[tuple[str, str]] | None = None,
) -> SentRequest:
    """`request` as it is kept: references back in place of their values, literal
    credentials masked, the body cut at BODY_LIMIT. `values`: secret_values(renderer,
    env), when the caller has them already."""
    if values is None:
        values = secret_values(renderer, env)

    def unresolved_here(text: str) -> str:
        return unresolved(text, values)

    headers = {
        name: value if name in _STANDARD else _masked_header(name, unresolved_here(value))
        for name, value in request.headers.items()
    }
    body = None
    if request.body is not None:
        body = request.body.decode("utf-8", errors="replace")
        if len(body) > BODY_LIMIT:
            body = body[:BODY_LIMIT] + f"... ({len(body) - BODY_LIMIT} more characters not kept)"
    return SentRequest(request.method, _masked_url(unresolved_here(request.url)), headers, body)


# The Standard Webhooks headers the worker adds: an id, a time and a signature (an
# HMAC, which tells nothing of its secret), shown as sent.
_STANDARD = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})

# A definition's URL and headers are the same for most of its deliveries: each is
# masked once, not once per delivery (masking parses and matches; docs/benchmarks.md).
_masked_header = functools.lru_cache(maxsize=4096)(mask_header)
_masked_url = functools.lru_cache(maxsize=4096)(mask_url)
