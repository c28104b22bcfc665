"""reconciler: GitOps for outgoing webhooks."""

from __future__ import annotations

__version__ = "0.1.0"
