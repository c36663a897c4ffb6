"""Edit config.toml in place, keeping its comments and layout (tomlkit round-trips them).

Every edit is loaded with `load_config` before it replaces the file, and replaces it atomically
(temp file in the same folder, then rename), so a bad edit never leaves a broken config behind.
Edits hold a lock on the file's folder, so two `kbd watch add` at once both land.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.toml_document import TOMLDocument

from kbd.config import ConfigError, check_watchable, load_config
from kbd.folders import WatchedFolder
from kbd.private import FILE_MODE, make_folders

KINDS = ("log", "report", "auto")


def example_text() -> str:
    """config.example.toml as shipped in the package (the repository's top-level copy is
    checked equal to it by the tests)."""
    return resources.files("kbd").joinpath("data", "config.example.toml").read_text()


def write_initial_config(path: Path, home: Path | None = None) -> None:
    """Write config.example.toml to `path`, with `home` set when given."""
    doc = tomlkit.parse(example_text())
    if home is not None:
        doc["home"] = str(home)  # tomlkit puts it after the commented `# home = ...` line
    real = _real(path)
    with _os_errors(real), _locked(real):
        _replace_validated(real, tomlkit.dumps(doc))


def list_folders(path: Path) -> tuple[WatchedFolder, ...]:
    """The watched folders, as the daemon reads them (absolute paths, defaults filled in)."""
    return load_config(path).folders


def add_folder(path: Path, folder: Path, kind: str = "auto", include: Iterable[str] = (),
               exclude: Iterable[str] = (), polling: bool = False) -> WatchedFolder:
    """Append a [[folders]] table for `folder`; refuses a folder that is already watched."""
    if kind not in KINDS:
        raise ConfigError(f"{kind!r} is not a folder kind", hint="log, report or auto")
    new = WatchedFolder(Path(folder).expanduser(), kind, tuple(include) or WatchedFolder.include,
                        tuple(exclude), polling)
    try:
        str(new.path).encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{os.fsencode(new.path)!r}: config.toml is UTF-8 text and cannot "
                          "name a folder whose path is not", hint="watch a folder above it "
                          "(the files under it may have any name)") from None
    check_watchable([new])

    def change(doc: TOMLDocument, current: tuple[WatchedFolder, ...]) -> None:
        if any(f.path == new.path for f in current):
            raise ConfigError(f"{new.path} is already watched",
                              hint="`kbd watch rm` it first to change its options")
        if "folders" not in doc:
            if not doc.as_string().endswith("\n\n"):
                doc.add(tomlkit.nl())  # a blank line after the commented example
            doc.append("folders", tomlkit.aot())
        doc["folders"].append(folder_table(new))

    edit(path, change)
    return new


def remove_folder(path: Path, folder: Path) -> WatchedFolder:
    """Delete the [[folders]] table of `folder` (matched by absolute path)."""
    target = WatchedFolder(Path(folder).expanduser()).path
    removed: list[WatchedFolder] = []

    def change(doc: TOMLDocument, current: tuple[WatchedFolder, ...]) -> None:
        paths = [f.path for f in current]
        if target not in paths:
            raise ConfigError(f"{target} is not watched",
                              hint="`kbd watch list` shows the watched folders")
        # load_config builds folders in file order, so its index is the table's index
        i = paths.index(target)
        removed.append(current[i])
        del doc["folders"][i]
        if not doc["folders"]:
            del doc["folders"]

    edit(path, change)
    return removed[0]


def set_model_paths(path: Path, checkpoint: Path, base: Path) -> None:
    """Point [model] checkpoint and base at local folders."""

    def change(doc: TOMLDocument, current: tuple[WatchedFolder, ...]) -> None:
        if "model" not in doc:
            doc.add("model", tomlkit.table())
        doc["model"]["checkpoint"] = str(checkpoint)
        doc["model"]["base"] = str(base)

    edit(path, change)


def folder_table(folder: WatchedFolder) -> tomlkit.items.Table:
    """A [[folders]] table with the keys that differ from the defaults (path and kind always)."""
    table = tomlkit.table()
    table["path"] = str(folder.path)
    table["kind"] = folder.kind
    if folder.include != WatchedFolder.include:
        table["include"] = list(folder.include)
    if folder.exclude:
        table["exclude"] = list(folder.exclude)
    if folder.polling:
        table["polling"] = True
    table.add(tomlkit.nl())  # a blank line before the next [[folders]]
    return table


def edit(path: Path, change: Callable[[TOMLDocument, tuple[WatchedFolder, ...]], None]) -> None:
    """Read the config, let `change` edit the document (it sees the current folders too),
    validate the result and replace the file. The config must exist: `kbd init` writes it."""
    real = _real(path)
    with _os_errors(real), _locked(real):
        if not real.exists():
            raise ConfigError(f"no config file at {path}",
                              hint="`kbd init` writes one (or pass --config PATH)")
        text = real.read_text()
        current = load_config(real).folders  # refuses a file that is broken already
        try:
            doc = tomlkit.parse(text)
        except TOMLKitError as e:  # load_config accepted it, so this is tomlkit's limit
            raise ConfigError(f"{path}: cannot be edited keeping its layout ({e})",
                              hint="edit it by hand") from e
        change(doc, current)
        _replace_validated(real, tomlkit.dumps(doc))


def _replace_validated(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, load it as a config, then rename it over
    `path`; on any failure the temp file goes and `path` is untouched."""
    make_folders(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _copy_mode_and_owner(path, tmp)
        try:
            load_config(tmp)
        except ConfigError as e:
            raise ConfigError(f"edit refused, {path} left as it was: "
                              + e.message.replace(str(tmp), str(path)), hint=e.hint) from None
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_mode_and_owner(original: Path, tmp: Path) -> None:
    """The new file keeps the old one's mode and owner (root editing kbd's file must not
    take it away from kbd); a new file is its owner's alone, whatever the umask."""
    try:
        st = original.stat()
    except FileNotFoundError:
        os.chmod(tmp, FILE_MODE)
        return
    os.chmod(tmp, st.st_mode & 0o7777)
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        # not root: the file becomes ours, as any editor's save would make it
        with suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)


@contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """A folder or file we may not write is the person's to fix: say which, no traceback."""
    try:
        yield
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}",
                          hint="check the folder's owner and permissions") from e


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on the config's folder (the config itself is replaced by rename,
    so a lock on it would be on the old inode). A folder, not a lock file: whoever reads it,
    root or kbd, can lock it, and no file appears whose mode would matter."""
    fd = os.open(make_folders(path.parent), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _real(path: Path) -> Path:
    """Edit the file a symlinked config points at; os.replace would replace the link."""
    return Path(os.path.realpath(Path(path).expanduser()))

