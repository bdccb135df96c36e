"""Private files: the data dir and everything in it readable by the owner only.

The data dir holds the owner's chats (database, datasets), adapters trained on them and the
Telegram session. Folders get mode 0700 and files 0600 when they are created (the CLI runs
with umask 077), and on every start whatever an older tgtwin or another program left there
loses its group and other permission bits (nothing gains a bit: a read-only file stays so).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: Creates files 0600 and folders 0700: what the CLI runs under.
PRIVATE_UMASK = 0o077
_OTHERS = 0o077


def private_data_dir(path: Path) -> Path:
    """Create `path` (mode 0700) if needed and make everything under it private."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    make_private(path)
    return path


def make_private(path: Path) -> None:
    """Take group and other permissions off `path` and everything under it (0644 -> 0600,
    0755 -> 0700); links are not followed.

    Only modes that change are written, so a pass over a data dir already private costs one
    `stat` per entry.
    """
    if not os.path.lexists(path):
        return
    _take_others_off(path)
    if path.is_symlink() or not path.is_dir():
        return
    for folder, folders, files in os.walk(path):
        for name in (*folders, *files):
            _take_others_off(Path(folder, name))


def _take_others_off(path: Path) -> None:
    status = path.lstat()
    mode = stat.S_IMODE(status.st_mode)
    if mode & _OTHERS and (stat.S_ISDIR(status.st_mode) or stat.S_ISREG(status.st_mode)):
        path.chmod(mode & ~_OTHERS)
