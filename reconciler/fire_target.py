"""`fire --webhook NAME`: the one live webhook an event is fired at, checked first.

Testing one endpoint must not reach every webhook of the organization, so a name
that names no live webhook, or one that does not fire on the event, is an error
before anything is stored.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from reconciler.errors import EventInvalid
from reconciler.store.base import LiveWebhook


def checked_target(
    webhooks: Iterable[LiveWebhook], organization: str, name: str, event_type: str
) -> LiveWebhook:
    """The live webhook `organization/name`, which must fire on `event_type` and be
    enabled; raises EventInvalid saying what is wrong (with a did-you-mean)."""
    live = {w.name: w for w in webhooks if w.organization == organization}
    found = live.get(name)
    if found is None:
        close = difflib.get_close_matches(name, sorted(live), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise EventInvalid(f"--webhook: no webhook {name} in organization {organization}{hint}")
    spec = found.spec_dict()
    if spec.get("event") != event_type:
        raise EventInvalid(
            f"--webhook: {organization}/{name} fires on {spec.get('event')}, not on "
            f"{event_type}: fire that event to test it"
        )
    if spec.get("enabled", True) is not True:
        raise EventInvalid(
            f"--webhook: {organization}/{name} is disabled (enabled: false): it never fires"
        )
    return found
