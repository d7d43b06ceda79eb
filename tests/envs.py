"""The environment the tests run ``pylcogt`` commands in."""

from __future__ import annotations

import os

#: Set by the tests themselves (conftest: the pinned Tycho-2 index files), kept in commands.
KEPT = ("PYLCOGT_INDEX_DIR",)


def clean_env() -> dict[str, str]:
    """This process's environment without the user's ``PYLCOGT_*`` settings (a developer's own
    database URL or data directory must not leak into a test), except those the suite sets."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYLCOGT_") or k in KEPT}
