"""Write realistic, varied, valid webhook definitions for benchmarks.

    python bench/generate.py DIR --orgs 100 --per-org 100 [--seed 0]

writes DIR/<organization>/<name>.yaml, one definition per file, the way a real
webhooks.d/ looks: Slack posts with YAML bodies, the product page's relaxed JSON
text or strict JSON text, signed JSON webhooks with retry schedules, Teams cards,
GET status boards with query strings and bearer headers, the odd PUT and DELETE.
About half of the bodies are JSON text (see KINDS).
Every file is valid (no errors, no warnings).

The output is deterministic. Which organizations and names exist, and what kind
of webhook each file holds, depend only on (orgs, per_org); the details (texts,
timeouts, rates, retry schedules, ...) depend on the seed as well. So a plan or
apply benchmark can write the same tree with another seed to get the same
webhooks with changed contents, or rewrite a few files with `definition_text`.

From other benchmarks:

    from bench.generate import write_definitions
    paths = write_definitions(root, orgs=100, per_org=100, seed=0)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

__all__ = [
    "EVENTS",
    "KINDS",
    "definition_text",
    "organization_name",
    "webhook_kind",
    "webhook_name",
    "write_definitions",
]

EVENTS = ("new_rule_violation", "reserved_instance_surplus", "reserved_instance_deficit")
_EVENT_SHORT = {
    "new_rule_violation": "rule-violation",
    "reserved_instance_surplus": "ri-surplus",
    "reserved_instance_deficit": "ri-deficit",
}
_EVENT_PROSE = {
    "new_rule_violation": "another New rule violation. The rule {{name}} was violated at: {{time}}",
    "reserved_instance_surplus": "a Reserved instance Surplus in your account at: {{time}}",
    "reserved_instance_deficit": "a Reserved instance Deficit in your account at: {{time}}",
}

_COMPANIES = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
    "tyrell", "cyberdyne", "soylent", "vandelay", "massive", "pied-piper", "aperture",
    "oscorp", "gringotts", "monarch", "nakatomi", "prestige",
)  # fmt: skip
_CHANNELS = (
    "cloud-cost", "finops", "platform", "sre-alerts", "billing", "infra", "ops",
    "cost-review", "eng-leads", "aws-budget",
)  # fmt: skip
_TEAMS = ("finops", "platform", "sre", "billing", "data", "security", "infra", "ops")
_DOMAINS = ("example", "example.com", "example.net", "example.org")
_TIMEOUTS = ("500ms", "2s", "5s", "10s", "15s", "30s", "1m")
_RATES = ("1/s", "2/s", "5/s", "20/m", "60/m", "100/h", "1000/h")
_DELAYS = ("1s", "5s", "10s", "30s", "1m", "5m", "10m", "30m", "1h", "2h", "5h", "10h")
_PLACEHOLDER_FIELDS = ("time", "name", "description", "event", "organization", "event_id")

# What kind of webhook a file holds, with how common it is. About half of the bodies
# are JSON text (relaxed or strict), as in real repositories, where a body is often
# pasted from the receiver's documentation: 44 of the 83 files with a body.
KINDS: tuple[tuple[str, int], ...] = (
    ("slack-yaml", 18),  # POST, body as YAML mapping
    ("slack-relaxed", 12),  # POST, body as relaxed JSON text (the product page's example)
    ("slack-json", 12),  # POST, the Slack body as strict JSON text, indented
    ("json-text", 8),  # POST, body as strict JSON text, on one line
    ("signed", 12),  # POST, nested YAML body, signing_secret, retry, timeout
    ("signed-json", 8),  # the same, its body as indented JSON text
    ("teams", 4),  # POST, card-like nested body with a list
    ("teams-json", 4),  # the same, its body as indented JSON text
    ("status-get", 14),  # GET with query and bearer header
    ("ticket-put", 5),  # PUT/PATCH with YAML body
    ("cleanup-delete", 3),  # DELETE with query
)
_KIND_NAMES = tuple(k for k, _ in KINDS)
_KIND_WEIGHTS = tuple(w for _, w in KINDS)


def organization_name(index: int) -> str:
    return f"{_COMPANIES[index % len(_COMPANIES)]}-{index:03d}"


def webhook_kind(org_index: int, index: int) -> tuple[str, str]:
    """(kind, event) of a file: fixed by its position, whatever the seed."""
    rng = random.Random(f"shape/{org_index}/{index}")
    kind = rng.choices(_KIND_NAMES, _KIND_WEIGHTS)[0]
    return kind, rng.choice(EVENTS)


def webhook_name(org_index: int, index: int) -> str:
    kind, event = webhook_kind(org_index, index)
    return f"{kind}-{_EVENT_SHORT[event]}-{index:04d}"


def definition_text(org_index: int, index: int, seed: int = 0) -> str:
    """The YAML text of one definition."""
    kind, event = webhook_kind(org_index, index)
    rng = random.Random(f"detail/{seed}/{org_index}/{index}")
    org = organization_name(org_index)
    return _RENDERERS[kind](rng, org, webhook_name(org_index, index), event)


def write_definitions(root: Path, orgs: int = 100, per_org: int = 100, seed: int = 0) -> list[Path]:
    """Write orgs × per_org definitions under root; returns the paths written."""
    root = Path(root)
    written: list[Path] = []
    for org_index in range(orgs):
        folder = root / organization_name(org_index)
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_org):
            path = folder / f"{webhook_name(org_index, index)}.yaml"
            path.write_text(definition_text(org_index, index, seed), encoding="utf-8")
            written.append(path)
    return written


# --- one renderer per kind -------------------------------------------------------------

_MODELINE = "# yaml-language-server: $schema=../../schemas/webhook.schema.json\n"


def _env(org: str, what: str) -> str:
    return "${env:%s_%s}" % (org.replace("-", "_").upper(), what)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common_tail(rng: random.Random, lines: list[str]) -> None:
    if rng.random() < 0.08:
        lines.append("enabled: false")
    if rng.random() < 0.1:
        lines.append("protect: true")


def _slack_text(rng: random.Random, event: str) -> str:
    text = f"nOps detected {_EVENT_PROSE[event]}. Description {{{{description}}}}."
    if rng.random() < 0.3:
        text += " Webhook {{webhook}} in {{organization}}."
    return text


def _slack_head(rng: random.Random, org: str, name: str, event: str) -> list[str]:
    channel = rng.choice(_CHANNELS)
    lines = [_MODELINE.rstrip("\n"), f"name: {name}", f"event: {event}", "method: POST"]
    secret = "SLACK_URL" if rng.random() < 0.7 else channel.upper().replace("-", "_") + "_HOOK"
    lines.append(f"url: {_env(org, secret)}")
    lines.append(f"description: Posts to the #{channel} Slack channel.")
    lines += ["headers:", "  Content-Type: application/json"]
    return lines


def _slack_yaml(rng: random.Random, org: str, name: str, event: str) -> str:
    lines = _slack_head(rng, org, name, event)
    lines += ["body:", f"  text: {_quoted(_slack_text(rng, event))}"]
    if rng.random() < 0.3:
        lines.append(f'  channel: "#{rng.choice(_CHANNELS)}"')
    if rng.random() < 0.2:
        lines.append("  unfurl_links: false")
    lines.append(f"rate_limit: {rng.choice(('1/s', '1/s', '2/s', '60/m'))}")
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _slack_relaxed(rng: random.Random, org: str, name: str, event: str) -> str:
    lines = _slack_head(rng, org, name, event)
    text = _slack_text(rng, event).replace("'", "")
    lines.append("# The product page's example, in its relaxed JSON form; sent as strict JSON.")
    lines += ["body: |", "  {", f"    text: '{text}'"]
    if rng.random() < 0.4:
        lines[-1] += ","
        lines.append(f"    channel: '#{rng.choice(_CHANNELS)}',")
        lines.append("    mrkdwn: true")
    lines.append("  }")
    lines.append("rate_limit: 1/s")
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _json_text(rng: random.Random, org: str, name: str, event: str) -> str:
    team = rng.choice(_TEAMS)
    host = f"{team}.{org}.{rng.choice(_DOMAINS)}"
    lines = [_MODELINE.rstrip("\n"), f"name: {name}", f"event: {event}", "method: POST"]
    lines.append(f"url: https://{host}/api/v{rng.randint(1, 3)}/events")
    lines += ["headers:", "  Content-Type: application/json"]
    if rng.random() < 0.5:
        lines.append(f"  X-Api-Key: {_env(org, team.upper() + '_API_KEY')}")
    fields = rng.sample(_PLACEHOLDER_FIELDS, rng.randint(2, 5))
    pairs = [f'"{f}": "{{{{{f}}}}}"' for f in fields]
    pairs.append(f'"source": "reconciler", "priority": {rng.randint(1, 5)}')
    lines += ["body: >-", "  {" + ", ".join(pairs) + "}"]
    if rng.random() < 0.5:
        lines.append(f"timeout: {rng.choice(_TIMEOUTS)}")
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _retry(rng: random.Random, lines: list[str]) -> None:
    count = rng.randint(0, 6)
    delays = sorted(rng.sample(_DELAYS, count), key=_DELAYS.index)
    lines.append("retry:")
    if rng.random() < 0.5:
        lines.append(f"  schedule: [{', '.join(delays)}]")
    elif delays:
        lines.append("  schedule:")
        lines += [f"    - {d}" for d in delays]
    else:
        lines.append("  schedule: []")
    if rng.random() < 0.6:
        lines.append(f"  jitter: {rng.choice(('0', '0.1', '0.2', '0.25', '0.5'))}")


def _signed(rng: random.Random, org: str, name: str, event: str) -> str:
    team = rng.choice(_TEAMS)
    host = f"{team}.{org}.{rng.choice(_DOMAINS)}"
    lines = [
        _MODELINE.rstrip("\n"),
        "# A signed JSON webhook: the receiver checks Standard Webhooks signatures.",
        f"name: {name}",
        f"event: {event}",
        "method: POST",
        f"url: https://{host}/hooks/{event.replace('_', '-')}",
        f"description: Feeds the {team} service of {org}.",
        "headers:",
        "  Content-Type: application/json",
    ]
    if rng.random() < 0.3:
        lines.append(f"  X-Team: {team}")
    lines += [
        "body:",
        '  event: "{{event}}"',
        '  event_id: "{{event_id}}"',
        '  organization: "{{organization}}"',
        '  detected_at: "{{time}}"',
        '  summary: "{{description}}"',
    ]
    if rng.random() < 0.5:
        lines += [
            "  labels:",
            f"    team: {team}",
            f"    severity: {rng.choice(('low', 'medium', 'high'))}",
        ]
    if rng.random() < 0.4:
        lines.append(f"  tags: [{', '.join(rng.sample(_TEAMS, 3))}]")
    secret = _env(org, "SIGNING_SECRET")
    if rng.random() < 0.15:  # during a rotation
        secret += " " + _env(org, "SIGNING_SECRET_NEXT")
    lines.append(f"signing_secret: {secret}")
    lines.append(f"timeout: {rng.choice(_TIMEOUTS)}")
    if rng.random() < 0.8:
        _retry(rng, lines)
    if rng.random() < 0.3:
        lines.append(f"rate_limit: {rng.choice(_RATES)}")
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _teams(rng: random.Random, org: str, name: str, event: str) -> str:
    lines = [
        _MODELINE.rstrip("\n"),
        f"name: {name}",
        f"event: {event}",
        "method: POST",
        f"url: {_env(org, 'TEAMS_WEBHOOK_URL')}",
        "headers:",
        "  Content-Type: application/json",
        "body:",
        "  type: message",
        "  attachments:",
        "    - contentType: application/vnd.microsoft.card.adaptive",
        "      content:",
        "        type: AdaptiveCard",
        '        version: "1.4"',
        "        body:",
        "          - type: TextBlock",
        "            weight: bolder",
        f"            text: {_quoted('nOps: ' + event.replace('_', ' '))}",
        "          - type: TextBlock",
        "            wrap: true",
        '            text: "{{description}} (at {{time}})"',
    ]
    if rng.random() < 0.5:
        lines += [
            "          - type: FactSet",
            "            facts:",
            '              - {title: Organization, value: "{{organization}}"}',
            '              - {title: Event id, value: "{{event_id}}"}',
        ]
    lines.append(f"rate_limit: {rng.choice(('1/s', '2/s', '20/m'))}")
    if rng.random() < 0.4:
        _retry(rng, lines)
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _status_get(rng: random.Random, org: str, name: str, event: str) -> str:
    team = rng.choice(_TEAMS)
    lines = [
        _MODELINE.rstrip("\n"),
        "# GET carries its data in the query string; placeholders there are percent-encoded.",
        f"name: {name}",
        f"event: {event}",
        "method: GET",
        f"url: https://status.{org}.{rng.choice(_DOMAINS)}/api/notify",
        "query:",
        '  rule: "{{name}}"',
        '  at: "{{time}}"',
        "  source: reconciler",
    ]
    if rng.random() < 0.4:
        lines.append(f"  team: {team}")
    if rng.random() < 0.3:
        lines.append(f"  priority: {rng.randint(1, 5)}")
    if rng.random() < 0.2:
        lines.append("  verbose: true")
    lines += ["headers:", f"  Authorization: Bearer {_env(org, 'STATUS_TOKEN')}"]
    if rng.random() < 0.3:
        lines.append("  Accept: application/json")
    lines.append(f"timeout: {rng.choice(_TIMEOUTS)}")
    if rng.random() < 0.3:
        lines.append(f"description: Pings the {team} status board.")
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _ticket_put(rng: random.Random, org: str, name: str, event: str) -> str:
    method = rng.choice(("PUT", "PATCH"))
    lines = [
        _MODELINE.rstrip("\n"),
        f"name: {name}",
        f"event: {event}",
        f"method: {method}",
        f"url: https://tickets.{org}.{rng.choice(_DOMAINS)}/api/issues/{{{{event_id}}}}",
        "headers:",
        "  Content-Type: application/json",
        f"  Authorization: Basic {_env(org, 'TICKETS_BASIC_AUTH')}",
        "body:",
        '  title: "{{event}}: {{name}}"',
        '  body: "{{description}}"',
        f"  assignee: {rng.choice(_TEAMS)}-oncall",
        f"  priority: {rng.randint(1, 4)}",
        f"  open: {rng.choice(('true', 'false'))}",
        f"timeout: {rng.choice(_TIMEOUTS)}",
    ]
    if rng.random() < 0.5:
        _retry(rng, lines)
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _cleanup_delete(rng: random.Random, org: str, name: str, event: str) -> str:
    lines = [
        _MODELINE.rstrip("\n"),
        f"name: {name}",
        f"event: {event}",
        "method: DELETE",
        f"url: https://cache.{org}.{rng.choice(_DOMAINS)}/api/reservations",
        "query:",
        '  event: "{{event_id}}"',
        f"  dry_run: {rng.choice(('true', 'false'))}",
        "headers:",
        f"  X-Api-Key: {_env(org, 'CACHE_API_KEY')}",
        f"description: Drops cached reservation data on {event.replace('_', ' ')}.",
    ]
    _common_tail(rng, lines)
    return "\n".join(lines) + "\n"


def _body_as_json_text(text: str) -> str:
    """`text` (a definition with a YAML `body:` mapping) with that body written as
    indented JSON text instead: the same webhook, as a body pasted from a
    receiver's documentation reads."""
    body = yaml.safe_load(text)["body"]
    dumped = json.dumps(body, indent=2, ensure_ascii=False).splitlines()
    lines = text.splitlines()
    start = lines.index("body:")
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    lines[start:end] = ["body: |", *("  " + line for line in dumped)]
    return "\n".join(lines) + "\n"


def _as_json_text(
    render: Callable[[random.Random, str, str, str], str],
) -> Callable[[random.Random, str, str, str], str]:
    return lambda rng, org, name, event: _body_as_json_text(render(rng, org, name, event))


_RENDERERS: dict[str, Callable[[random.Random, str, str, str], str]] = {
    "slack-yaml": _slack_yaml,
    "slack-relaxed": _slack_relaxed,
    "slack-json": _as_json_text(_slack_yaml),
    "json-text": _json_text,
    "signed": _signed,
    "signed-json": _as_json_text(_signed),
    "teams": _teams,
    "teams-json": _as_json_text(_teams),
    "status-get": _status_get,
    "ticket-put": _ticket_put,
    "cleanup-delete": _cleanup_delete,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="folder to write <organization>/<name>.yaml into")
    parser.add_argument("--orgs", type=int, default=100, help="organizations (default 100)")
    parser.add_argument("--per-org", type=int, default=100, help="files per organization")
    parser.add_argument("--seed", type=int, default=0, help="varies the details (default 0)")
    args = parser.parse_args(argv)
    paths = write_definitions(args.dir, args.orgs, args.per_org, args.seed)
    print(f"wrote {len(paths)} definitions in {args.orgs} organizations under {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
