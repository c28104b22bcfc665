"""Whether the process that holds a lock or a lease is gone: the one rule behind every
takeover of a holder that died on this host (the apply lock, retention's turn, a
dispatcher's deliveries).

A holder is named by its host name and process id. Only a holder on this host can be
found dead, by asking the kernel for its process; another host's holder is presumed
alive, and what it holds ends with its lease.
"""

from __future__ import annotations

import os
import socket


def gone_here(pid: int, host: str, here: str | None = None) -> bool:
    """True when `host` is this host (`here`, by default its name) and no process
    `pid` runs on it; False for another host's process, or one that runs (as
    another user's, too)."""
    if host != (here if here is not None else socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
