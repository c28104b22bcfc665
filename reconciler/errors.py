"""Expected failures, each printed by the CLI as one line.

    ReconcilerError            exit 1, message shown as is
     ├── DefinitionsInvalid    the definitions have problems (listed separately)
     ├── StateError            the live state cannot be read or written
     │    ├── NoState           nothing at the URL is a state (and the command makes none)
     │    ├── StaleState        a saved plan no longer matches the live state
     │    └── LockTimeout       another apply holds the lock
     ├── PlanRefused           a safety guard stops the apply (deletes, mass delete)
     ├── ApprovalRefused       nobody approved the changes
     ├── PlanFileError         a saved plan cannot be read
     ├── EventInvalid          an event given on the command line is not one intake takes
     ├── TokenError            an API token cannot be made or found
     ├── ScaffoldError         `init` would overwrite files
     └── ServeError            `serve` cannot listen on its address or start

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Root of every failure the user can act on."""


class DefinitionsInvalid(ReconcilerError):
    """The definitions have problems; they were already reported one per line."""


class StateError(ReconcilerError):
    """The live state cannot be opened, read or written."""


class NoState(StateError):
    """No state is where the URL points, and the command is not one that makes a state."""


class StaleState(StateError):
    """The live state changed since a saved plan was made."""


class LockTimeout(StateError):
    """Another process holds the apply lock."""


class PlanRefused(ReconcilerError):
    """A safety guard refuses the plan as it stands."""


class ApprovalRefused(ReconcilerError):
    """The changes were not approved."""


class PlanFileError(ReconcilerError):
    """A saved plan file cannot be used."""


class EventInvalid(ReconcilerError):
    """An event given on the command line (fire, render) is not one intake would accept."""


class TokenError(ReconcilerError):
    """An API token cannot be made as asked, or is not there to revoke."""


class ScaffoldError(ReconcilerError):
    """`reconciler init` found files it would overwrite."""


class ServeError(ReconcilerError):
    """`reconciler serve` cannot listen on the address asked for, or cannot start."""
