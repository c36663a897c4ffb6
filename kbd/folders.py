"""Which files kbd reads: watched folders, their globs, the folder a path belongs to, and the
scan of what is in them now. The watcher (kbd.watch), ingest and the config all use these;
nothing here imports watchdog."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

# the scan's warnings come from the watcher's logger, as they did when they were in kbd.watch
log = logging.getLogger("kbd.watch")

# Editors and downloaders write these beside the real file, then rename or delete them.
TEMP_GLOBS = (".#*", "*.swp", "*~", "*.tmp", ".*.part")


@dataclass(frozen=True)
class WatchedFolder:
    """A folder whose files kbd ingests; config.toml has one per folder entry."""

    path: Path
    kind: str = "auto"  # "log" | "report" | "auto": for the parsers, not used here
    include: tuple[str, ...] = ("*",)  # globs against the path relative to `path` and the name
    exclude: tuple[str, ...] = ()  # wins over include; TEMP_GLOBS are always excluded
    polling: bool = False  # network/container mounts, where inotify sees nothing
    poll_interval_s: float = 2.0
    follow_symlinks: bool = False  # read symlinks that lead outside every watched folder

    def __post_init__(self) -> None:
        # Files are stored under this spelling: absolute and normalised, symlinks kept
        # (resolving them would rename every file under a linked root). The watch is on the
        # resolved folder, and its events are spelled back under this path.
        object.__setattr__(self, "path", _abspath(self.path))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))


def folder_for(folders: Iterable[WatchedFolder], path: str | os.PathLike) -> WatchedFolder | None:
    """The folder `path` belongs to, or None when it is outside them all or its globs reject it.

    With nested folders the innermost one decides, so its globs and kind hold in its subtree.
    """
    path = _abspath(path)
    folder = owner(folders, path)
    if folder is None or path == folder.path:
        return None
    relative, name = path.relative_to(folder.path).as_posix(), path.name

    def matches(globs: Iterable[str]) -> bool:
        return any(fnmatchcase(relative, g) or fnmatchcase(name, g) for g in globs)

    if matches(TEMP_GLOBS) or matches(folder.exclude) or not matches(folder.include):
        return None
    return folder


def spelled_inside(folders: Iterable[WatchedFolder], target: Path) -> Path | None:
    """`target`, a path with no symlinks in it (os.path.realpath), spelled under the watched
    folder whose resolved root holds it, or None when it is outside them all."""
    for folder in folders:
        real_root = Path(os.path.realpath(folder.path))
        if target.is_relative_to(real_root):
            return folder.path / target.relative_to(real_root)
    return None


def scan(folders: Iterable[WatchedFolder]) -> Iterator[tuple[WatchedFolder, Path]]:
    """Every regular file under the folders that passes their globs, each once.

    Symlinks to files are followed; symlinked directories are not entered (so there are no loops,
    and the scan sees what the watcher sees). Missing roots are skipped; so are unreadable
    directories, with a warning.
    """
    folders = tuple(folders)
    for folder in folders:
        if not folder.path.is_dir():
            log.debug("not scanning %s: not a directory (yet)", folder.path)
            continue
        for path in walk(folder.path):
            # `is`: under nested folders the file is yielded once, by the folder that owns it
            if folder_for(folders, path) is folder:
                yield folder, path


def _abspath(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def owner(folders: Iterable[WatchedFolder], path: Path) -> WatchedFolder | None:
    """The innermost folder whose root is `path` or contains it."""
    owners = [f for f in folders if path.is_relative_to(f.path)]
    return max(owners, key=lambda f: len(f.path.parts), default=None)


def walk(root: Path) -> Iterator[Path]:
    """Regular files under root, sorted; symlinked directories are not entered."""

    def skip(error: OSError) -> None:
        if error.filename != os.fspath(root) or root.exists():
            log.warning("skipping unreadable directory %s: %s", error.filename, error.strerror)

    for directory, subdirs, names in os.walk(root, onerror=skip):  # followlinks=False
        subdirs.sort()
        for name in sorted(names):
            path = os.path.join(directory, name)
            if os.path.isfile(path):  # not fifos, sockets or broken links
                yield Path(path)
