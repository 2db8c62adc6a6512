"""The one rule for a name that becomes part of a path: a spec's name, its group (folder), a run's name, a record's
fields. Letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 100 characters: no `/`, no
`..`, nothing a shell or a file system reads specially, so a name never writes outside the folder it is joined to.
"""

from __future__ import annotations

import re
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
EXPECTED = "expected letters, digits, '.', '_' or '-', starting with a letter or digit, at most 100 characters"


def name_problem(value: object) -> str | None:
    """Why `value` cannot be a name that becomes a path, or None where it can."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        return f"{EXPECTED}, got {value!r}"
    return None


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, resolved (links and `..` followed), lies under `root` resolved: the last check before a
    write that a name led to."""
    return path.resolve().is_relative_to(root.resolve())
