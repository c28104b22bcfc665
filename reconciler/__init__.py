"""reconciler: GitOps for outgoing webhooks."""

from __future__ import annotations

from importlib import metadata

# The name it is published under on PyPI; the package and the command are `reconciler`.
DISTRIBUTION = "webhook-reconciler"

try:
    # The installed release, as pip knows it: what `reconciler init` pins the
    # workflows and the pre-commit hook to, so there is no second copy to forget.
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # pragma: no cover - a checkout never installed
    raise ImportError(
        f"reconciler is not installed as {DISTRIBUTION}: run `pip install -e .` in its "
        "checkout (after `pip uninstall reconciler` where an older install used that name)"
    ) from None
