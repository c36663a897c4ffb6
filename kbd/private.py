"""What kbd stores is its user's alone: files 0600, folders 0700, whatever the umask.

Stored log lines may hold what only the logs' readers should see (tokens, addresses, /var/log
read through group adm), so no other local user may read the database, the memory matrices,
the digests or the config. The command line sets the umask to 0o077 once (kbd.cli.main), which
covers files that libraries create for kbd too; the functions here give the same modes
explicitly, so kbd used as a library keeps them as well, and take away what an older kbd left
open to other users.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("kbd.private")

UMASK = 0o077
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def make_folders(folder: Path) -> Path:
    """Create `folder` and its missing parents, each 0700; existing ones stay as they are."""
    missing = [p for p in (folder, *folder.parents) if not p.is_dir()]
    for parent in reversed(missing):
        parent.mkdir(mode=FOLDER_MODE, exist_ok=True)
    return folder


def private_folder(folder: Path) -> Path:
    """A folder of kbd's own (data, memory, reports), created or tightened to 0700."""
    if tighten(make_folders(folder)):
        log.warning("%s was open to other users: now its owner's alone", folder)
    return folder


def private_home(home: Path) -> Path:
    """The data folder, 0700, with everything in it its owner's alone: what an older kbd
    left open to other users is tightened, said in one log line."""
    private_folder(home)
    tightened = [Path(folder, name) for folder, folders, files in os.walk(home)
                 for name in folders + files if tighten(Path(folder, name))]
    if tightened:
        log.warning("%d files and folders under %s were open to other users: now their "
                    "owner's alone (%s, ...)", len(tightened), home, tightened[0])
    return home


def private_fd(path: Path, flags: int) -> int:
    """os.open(path, flags | O_CREAT) leaving the file 0600, whether new or left looser."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    if tighten(path):
        log.warning("%s was open to other users: now its owner's alone", path)
    return fd


def write_private(path: Path, text: str) -> None:
    """Replace the contents of `path` with `text` (UTF-8), the file 0600."""
    with os.fdopen(private_fd(path, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
        f.write(text)


def tighten(path: Path) -> bool:
    """Take the group's and others' permissions off a file or folder (never a symlink's
    target); True when it had some. One kbd may not change (another user's, immutable) is
    logged and left: kbd works on."""
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not mode & UMASK:
        return False
    try:
        path.chmod(mode & ~UMASK)
    except OSError as e:
        log.warning("%s is open to other users (mode %04o) and cannot be tightened: %s",
                    path, mode, e.strerror)
        return False
    return True
