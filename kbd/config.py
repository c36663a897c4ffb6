"""config.toml + KBD_HOME -> one frozen Config. Unknown keys and bad values are errors naming
the key, so a typo never silently falls back to a default."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from kbd.errors import KbdError
from kbd.watch import WatchedFolder

ENGINES = ("clara", "text")
ANSWERS = ("quote", "generate")  # how the text engine answers: ModelConfig.answer


class ConfigError(KbdError):
    code = "config"


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: Path | None = None  # CLaRa checkpoint folder; None: passages wait for one
    base: Path | None = None  # local folder of the base model
    device: str = "auto"
    dtype: str = "auto"
    compress_batch_size: int = 64
    engine: str = ""  # clara | text; empty: clara when a checkpoint is set, else text
    text_model: str = "smollm2"  # the text engine's model: smollm2, a model folder or a .gguf
    answer: str = "quote"  # the text engine's answer: quote (the best line) | generate (model)

    @property
    def active_engine(self) -> str:
        """The engine that answers questions: clara or text."""
        return self.engine or ("clara" if self.checkpoint is not None else "text")


@dataclass(frozen=True)
class IngestConfig:
    max_file_mb: int = 512
    debounce_s: float = 2.0
    max_wait_s: float = 5.0  # a file that keeps changing (a busy log) is read this often
    rescan_interval_s: float = 300.0
    pdf_timeout_s: float = 60.0  # a PDF whose text takes longer is refused (too-slow)


@dataclass(frozen=True)
class ServerConfig:
    socket: Path | None = None  # default: $XDG_RUNTIME_DIR/kbd/kbd.sock, else <home>/run/
    log_level: str = "info"  # debug | info | warning | error


@dataclass(frozen=True)
class SchedulerConfig:
    timezone: str = ""  # IANA zone for the digest schedule; empty: the machine's local zone
    digest_cron: str = "0 7 * * *"  # daily at 07:00; empty: no scheduled digests
    misfire_grace_s: int = 3600  # runs missed while kbd was down are made up this late
    reports_dir: Path | None = None  # digests; default <home>/reports


@dataclass(frozen=True)
class Config:
    home: Path  # data dir: database, memory matrices, reports
    store_url: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    folders: tuple[WatchedFolder, ...] = ()
    source: Path | None = None  # the file it was read from

    @property
    def database_url(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'kbd.sqlite3'}"

    @property
    def memory_dir(self) -> Path:
        return self.home / "memory"

    @property
    def reports_dir(self) -> Path:
        return self.scheduler.reports_dir or self.home / "reports"

    @property
    def socket_path(self) -> Path:
        if self.server.socket is not None:
            return self.server.socket
        runtime = xdg_folder("XDG_RUNTIME_DIR")
        return runtime / "kbd" / "kbd.sock" if runtime else self.home / "run" / "kbd.sock"


XDG_VARIABLES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME",
                 "XDG_RUNTIME_DIR")


def xdg_folder(variable: str) -> Path | None:
    """An XDG base folder from its variable; None when unset, empty or relative, which the
    XDG spec says to treat alike (an empty one is not the current folder)."""
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else None


def drop_unusable_xdg_variables() -> None:
    """Unset the XDG variables that xdg_folder ignores, so that libraries (the model hub's
    cache under XDG_CACHE_HOME) ignore them as well instead of writing to the current folder."""
    for variable in XDG_VARIABLES:
        if variable in os.environ and xdg_folder(variable) is None:
            del os.environ[variable]


# The values each numeric key accepts, both ends included; anything else, inf and nan too, is
# refused at start. Too large is refused as well as too small: 1e308 seconds overflows the
# waits it is used in, killing the thread that waits.
RANGES: dict[tuple[type, str], tuple[float, float]] = {
    (ModelConfig, "compress_batch_size"): (1, 4096),
    (IngestConfig, "max_file_mb"): (1, 2**20),  # up to 1 TiB
    (IngestConfig, "debounce_s"): (0.0, 3600.0),
    (IngestConfig, "max_wait_s"): (0.1, 86400.0),  # and not below debounce_s
    (IngestConfig, "rescan_interval_s"): (1.0, 604800.0),  # up to a week
    (IngestConfig, "pdf_timeout_s"): (0.1, 86400.0),
    (SchedulerConfig, "misfire_grace_s"): (1, 31536000),  # up to a year
    (WatchedFolder, "poll_interval_s"): (0.1, 3600.0),
}


def default_home() -> Path:
    if "KBD_HOME" in os.environ:
        return Path(os.environ["KBD_HOME"]) / "data"
    return (xdg_folder("XDG_DATA_HOME") or Path.home() / ".local/share") / "kbd"


def default_config_path() -> Path:
    if "KBD_CONFIG" in os.environ:
        return Path(os.environ["KBD_CONFIG"])
    if "KBD_HOME" in os.environ:
        return Path(os.environ["KBD_HOME"]) / "config.toml"
    return (xdg_folder("XDG_CONFIG_HOME") or Path.home() / ".config") / "kbd/config.toml"


def _build(cls, raw: dict, where: str, **fixed):
    """Make a config dataclass from a TOML table, refusing unknown keys and wrong types."""
    known = {f.name: f for f in fields(cls)}
    values = dict(fixed)
    for key, value in raw.items():
        if key not in known or key in fixed:
            raise ConfigError(f"{where}.{key}: unknown key",
                              hint=f"known keys: {', '.join(sorted(set(known) - set(fixed)))}")
        default = getattr(cls, key, None) if key not in ("include", "exclude") else ()
        if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, int | float) and not isinstance(value, int | float)):
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        if (cls, key) in RANGES:
            check_number(f"{where}.{key}", value, type(default), RANGES[cls, key])
        if key in ("include", "exclude"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of glob strings")
            value = tuple(value)
        elif key in ("checkpoint", "base", "path", "socket", "reports_dir"):
            value = Path(value).expanduser() if value else None
        values[key] = value
    return cls(**values)


def check_number(key: str, value: float, kind: type, bounds: tuple[float, float],
                 hint: str | None = None) -> None:
    """Refuse a number outside `bounds` (or not finite, or a fraction where a whole number
    is meant), naming the key, the value and the range."""
    low, high = bounds
    whole = "a whole number " if kind is int else ""
    if (kind is int and not isinstance(value, int)) or not (
            math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{key} = {value!r} is out of range: it must be {whole}from {low:g} "
                          f"to {high:g}", hint=hint)


def check_watchable(folders: Iterable[WatchedFolder]) -> None:
    """kbd watches folders: a watched path that is a file (or a FIFO, a device) is refused by
    the daemon and by `kbd watch add`. A path that does not exist yet is watched once it does.
    (Not part of load_config, so `kbd watch rm` can still remove such a folder.)"""
    for folder in folders:
        if folder.path.exists() and not folder.path.is_dir():
            raise ConfigError(
                f"watched path {folder.path} is a file, not a folder",
                hint=f'watch its folder instead: path = "{folder.path.parent}" with '
                     f'include = ["{folder.path.name}"]')


def load_config(path: Path | None = None) -> Config:
    """Read the config file (a missing file means all defaults)."""
    path = path or default_config_path()
    raw: dict = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from e
    where = str(path)
    unknown = set(raw) - {"home", "store", "model", "ingest", "server", "scheduler", "folders"}
    if unknown:
        raise ConfigError(f"{where}: unknown section or key {sorted(unknown)[0]!r}")
    store = raw.get("store", {})
    if set(store) - {"url"}:
        raise ConfigError(f"{where}: store.{sorted(set(store) - {'url'})[0]}: unknown key")
    folders = []
    for i, table in enumerate(raw.get("folders", [])):
        if "path" not in table:
            raise ConfigError(f"{where}: folders[{i}].path is required")
        folder = _build(WatchedFolder, table, f"folders[{i}]")
        if folder.kind not in ("log", "report", "auto"):
            raise ConfigError(f"{where}: folders[{i}].kind must be log, report or auto")
        folders.append(folder)
    model = _build(ModelConfig, raw.get("model", {}), "model")
    if model.engine not in ("", *ENGINES):
        raise ConfigError(f"{where}: model.engine must be clara or text, got {model.engine!r}",
                          hint="leave it out: clara when a checkpoint is set, else text")
    if not isinstance(model.text_model, str) or not model.text_model:
        raise ConfigError(f"{where}: model.text_model must name smollm2, a model folder or a "
                          ".gguf file")
    if model.answer not in ANSWERS:
        raise ConfigError(f"{where}: model.answer must be quote or generate, got "
                          f"{model.answer!r}",
                          hint="quote: the best matching line with its place (the default); "
                               "generate: the text model writes the answer")
    ingest = _build(IngestConfig, raw.get("ingest", {}), "ingest")
    low, high = RANGES[IngestConfig, "max_wait_s"]
    check_number("ingest.max_wait_s", ingest.max_wait_s, float,
                 (max(ingest.debounce_s, low), high),
                 hint=f"not below ingest.debounce_s ({ingest.debounce_s:g})")
    return Config(
        home=Path(raw["home"]).expanduser() if "home" in raw else default_home(),
        store_url=store.get("url", ""),
        model=model,
        ingest=ingest,
        server=_build(ServerConfig, raw.get("server", {}), "server"),
        scheduler=_build(SchedulerConfig, raw.get("scheduler", {}), "scheduler"),
        folders=tuple(folders),
        source=path if path.exists() else None,
    )
