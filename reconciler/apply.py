"""Apply a plan: under the lock, guarded, in one transaction, into the audit log.

Whether the plan was just made or read from a file, every guard is derived from
the live state read while the lock is held; the plan only says which changes
were reviewed, and is refused when the live state no longer matches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from reconciler.envaccess import SHARED_ENV_SCOPE
from reconciler.errors import ApprovalRefused, PlanRefused, StaleState
from reconciler.model import canonical_json
from reconciler.plan import DEFAULT_DELETE_SHARE, Change, LiveView, Plan
from reconciler.provenance import CommitCheck
from reconciler.secrets import mask_spec
from reconciler.store.base import AuditEntry, AuditRecord, Store, Write


class Approver(Protocol):
    """Asks a person; on no terminal, `interactive` is False and nothing is asked."""

    interactive: bool

    def confirm_deletes(self, plan: Plan) -> bool: ...

    def approve(self, plan: Plan) -> bool: ...


@dataclass(frozen=True)
class ApplyOptions:
    actor: str
    git_commit: str | None = None
    allow_delete: bool = False
    force: bool = False
    delete_share: float = DEFAULT_DELETE_SHARE
    auto_approve: bool = False
    lock_timeout: float = 0.0
    # Compares the definitions' commit with the live state's last one (None: no check).
    commit_check: Callable[[AuditEntry | None], CommitCheck] | None = None
    allow_rollback: bool = False  # apply a commit older than, or unrelated to, the live one


@dataclass(frozen=True)
class ApplyOutcome:
    plan: Plan
    serial: int  # the state's serial after the apply (unchanged when nothing applied)
    applied: bool


def apply(
    store: Store,
    make: Callable[[], Plan],
    options: ApplyOptions,
    approver: Approver,
    show: Callable[[Plan, list[str]], None],
    *,
    saved: bool = False,
) -> ApplyOutcome:
    """Plan (or load a saved plan) under the lock, check it, ask, then commit.

    `make` is called once the lock is held, so the plan shown is the plan applied.
    The live state is then read again, under the same lock: the plan must still
    describe it, and every guard comes from it, never from the plan (`saved` only
    words the refusals).
    """
    holder = f"{options.actor} (apply)"
    with store.lock(holder, options.lock_timeout):
        plan = make()
        live = _check_still_live(store, plan, saved)
        if options.commit_check is not None:
            plan.commit_check = commit_check(store, plan, options.commit_check)
        rollback = plan.commit_check.refusal() if plan.commit_check is not None else None
        first = [rollback] if rollback is not None and not options.allow_rollback else []

        def refusals_with(allow_delete: bool) -> list[str]:
            return first + plan.refusals(
                allow_delete=allow_delete,
                force=options.force,
                delete_share=options.delete_share,
                live=live,
            )

        refusals = refusals_with(options.allow_delete)
        show(plan, refusals)
        if not plan.has_changes:
            return ApplyOutcome(plan, plan.serial, applied=False)
        only_delete_permission_missing = (
            not options.allow_delete
            and bool(plan.deletes())
            and bool(refusals)
            and not refusals_with(True)
        )
        if only_delete_permission_missing and approver.interactive:
            if not approver.confirm_deletes(plan):
                raise ApprovalRefused("deletes were not confirmed; nothing was changed")
            refusals = refusals_with(True)
        if refusals:
            raise PlanRefused(refusals[0] + ("" if len(refusals) == 1 else " (and more, above)"))
        if not options.auto_approve:
            if not approver.interactive:
                raise ApprovalRefused(
                    "not on a terminal and --auto-approve not given; nothing was changed"
                )
            if not approver.approve(plan):
                raise ApprovalRefused("apply cancelled; nothing was changed")
        writes, audit = changes_to_writes(plan, options)
        shared = plan.shared_env.after if plan.shared_env is not None else None
        serial = store.commit(writes, audit, expected_serial=plan.serial, shared_env=shared)
        return ApplyOutcome(plan, serial, applied=True)


def commit_check(
    store: Store, plan: Plan, check: Callable[[AuditEntry | None], CommitCheck]
) -> CommitCheck:
    """The definitions' commit beside the live state's: for each organization the plan
    changes (and the shared list), its own last applied commit, so an apply of one
    organization never hides another's newer one. The first that refuses, else the
    first git cannot tell about, else the scope's newest."""
    scopes = sorted({c.organization for c in plan.changes})
    if plan.shared_env is not None:
        scopes.append(SHARED_ENV_SCOPE)
    checks = [check(store.last_commit(scope)) for scope in scopes]
    for wanted in (CommitCheck.refusal, CommitCheck.warning):
        for found in checks:
            if wanted(found) is not None:
                return found
    return check(store.last_commit(plan.organization))


def _check_still_live(store: Store, plan: Plan, saved: bool) -> LiveView:
    """The live state in the plan's scope, once it is known to be the one planned against."""
    what = "the saved plan" if saved else "the plan"
    state = store.state()
    if state.lineage != plan.lineage:
        raise StaleState(f"{what} was made against another state (lineage differs); plan again")
    live = LiveView.of(store.webhooks(plan.organization), plan.organization)
    mismatches = plan.mismatches(live)
    if plan.shared_env is not None and plan.shared_env.before != store.shared_env():
        mismatches.append("the shared list of variables was changed")
    if mismatches:
        raise StaleState(
            f"the live state changed since {what} was made: {'; '.join(mismatches)}; plan again"
        )
    if state.serial != plan.serial:
        raise StaleState(
            f"the live state changed since the plan was made (serial {plan.serial}, "
            f"now {state.serial}); plan again"
        )
    return live


def changes_to_writes(plan: Plan, options: ApplyOptions) -> tuple[list[Write], list[AuditRecord]]:
    checksum = plan.checksum()
    writes: list[Write] = []
    audit: list[AuditRecord] = []
    for change in plan.changes:
        if change.action == "delete":
            writes.append(Write("delete", change.organization, change.name))
        else:
            assert change.after is not None
            text = change.after_json or canonical_json(change.after)
            writes.append(Write("put", change.organization, change.name, text))
        audit.append(
            AuditRecord(
                action=change.action,
                organization=change.organization,
                name=change.name,
                before=mask_spec(change.before) if change.before is not None else None,
                after=mask_spec(change.after) if change.after is not None else None,
                actor=options.actor,
                git_commit=options.git_commit,
                plan_checksum=checksum,
                note=_note(change, plan, options),
                source=change.source,
            )
        )
    audit += _shared_env_audit(plan, options, checksum)
    return writes, audit


def _shared_env_audit(plan: Plan, options: ApplyOptions, checksum: str) -> list[AuditRecord]:
    """One audit line per shared variable added, removed or given another reason,
    filed under the shared list rather than an organization."""
    if plan.shared_env is None:
        return []
    before, after = plan.shared_env.before, plan.shared_env.after
    return [
        AuditRecord(
            action=action,
            organization=SHARED_ENV_SCOPE,
            name=name,
            before={"reason": before[name]} if name in before else None,
            after={"reason": after[name]} if name in after else None,
            actor=options.actor,
            git_commit=options.git_commit,
            plan_checksum=checksum,
            note=_rollback_note(plan, options),
        )
        for action, name, _shown in plan.shared_env.lines()
    ]


def _rollback_note(plan: Plan, options: ApplyOptions) -> str | None:
    if not options.allow_rollback or plan.commit_check is None:
        return None
    return plan.commit_check.rollback_note()


def _note(change: Change, plan: Plan, options: ApplyOptions) -> str | None:
    notes = []
    rollback = _rollback_note(plan, options)
    if rollback:
        notes.append(rollback)
    if change.resumes:
        notes.append(f"resumed a webhook paused outside apply ({change.resumes})")
    drifted = any(
        d.organization == change.organization and d.name == change.name for d in plan.drift
    )
    if drifted and change.action != "delete":
        notes.append("restored the definition over drift")
    return "; ".join(notes) or None
