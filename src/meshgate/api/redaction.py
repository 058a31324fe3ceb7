"""What callers without the admin role do not see: file-system paths in errors, stderr lines
and storage locations (they tell an attacker where things are)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Any

from starlette.requests import Request

from meshgate.security import principal_of


def _path_pattern() -> re.Pattern[str]:
    roots = {
        "usr", "home", "tmp", "var", "etc", "opt", "root", "srv", "proc", "dev", "mnt", "run",
        "snap", "nix", "bin", "sbin", "lib", "lib64", "Users", "private", "Volumes", "work",
    }  # fmt: skip
    for place in (os.getcwd(), sys.prefix, os.path.expanduser("~"), tempfile.gettempdir()):
        first = place.strip("/").split("/", 1)[0]
        if first:
            roots.add(first)
    alternatives = "|".join(sorted(map(re.escape, roots)))
    return re.compile(rf"(?<![\w.~:/-])/(?:{alternatives})(?:/[^\s'\"`,;:()\[\]{{}}<>]*)?")


_FS_PATH = _path_pattern()


def hide_paths(value: Any) -> Any:
    """`value` with every file-system path in its strings replaced by `<path>`: what callers
    without the admin role see of errors, stderr and storage locations."""
    if isinstance(value, str):
        return _FS_PATH.sub("<path>", value)
    if isinstance(value, dict):
        return {k: hide_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_paths(v) for v in value]
    return value


def for_caller(request: Request, value: Any) -> Any:
    """`value` as this request's principal may see it: whole for admins, without paths for
    everyone else."""
    return value if principal_of(request.scope).is_admin else hide_paths(value)
