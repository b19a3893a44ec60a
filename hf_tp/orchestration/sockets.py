"""The driver's private socket folders: one per start, in the temp directory, removed at shutdown.

A driver killed by SIGKILL cannot remove its own, so each folder's name carries its driver's pid,
and every start removes the folders of this user's drivers that no longer run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

PREFIX = "hf_tp-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_socket_folders(root: str | None = None) -> list[str]:
    """Remove ``hf_tp-<pid>-*`` folders in ``root`` (the temp directory) owned by this user whose driver
    pid no longer runs; returns their paths. A reused pid keeps its folder until that process ends too
    (never a live driver's folder removed). Folders of other users are never touched."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not _running(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def make_socket_folder() -> str:
    """A new 0700 folder for the driver's socket (only this user can connect), after clearing stale ones."""
    remove_stale_socket_folders()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
