"""config.toml + KBD_HOME -> one frozen Config. Unknown keys and bad values are errors naming
the key, so a typo never silently falls back to a default."""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from kbd.errors import ConfigError
from kbd.folders import WatchedFolder

ENGINES = ("clara", "text")
ANSWERS = ("quote", "generate")  # how the text engine answers: ModelConfig.answer


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: Path | None = None  # CLaRa checkpoint folder; None: passages wait for one
    base: Path | None = None  # local folder of the base model
    device: str = "auto"
    dtype: str = "auto"
    compress_batch_size: int = 64
    engine: str = ""  # clara | text; empty: clara when a checkpoint is set, else text
    text_model: str = "smollm2"  # smollm2 (with kbd's answerer), smollm2-base, a folder, a .gguf
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
    digest_notify: tuple[str, ...] = ()  # [notify.NAME] channels each digest is sent to


ROLES = ("all", "ingest", "model")
FLEET_ROLES = ("ingest", "model")  # roles that share a PostgreSQL store with other nodes
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class NodeConfig:
    """This daemon's place in a fleet of daemons sharing one PostgreSQL store (docs/fleet.md).
    role all is one daemon doing everything, the single-host default; ingest watches and
    ingests (no model); model compresses, answers and runs the standing questions."""

    name: str = ""  # empty: this machine's host name
    role: str = "all"  # all | ingest | model
    # a model node's claim on a batch of the compression backlog: past it (the node died or
    # stalled), another model node may take the batch over
    lease_s: float = 300.0

    @property
    def node_name(self) -> str:
        return self.name or socket.gethostname().split(".")[0][:63] or "localhost"

    @property
    def fleet(self) -> bool:
        return self.role in FLEET_ROLES


CHANNEL_TYPES = ("webhook", "email", "command")
WEBHOOK_FORMATS = ("generic", "slack", "matrix", "ntfy")
MAIL_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class NotifyChannel:
    """A [notify.NAME] table: where events go. Secrets (a webhook's bearer token or URL, the
    SMTP password) are read from a file or an environment variable named here, never written
    in the config itself."""

    name: str
    type: str  # webhook | email | command
    timeout_s: float = 10.0  # one delivery attempt: HTTP request, SMTP session or command
    retry_first_s: float = 1.0  # back-off after the first failure, doubling ...
    retry_max_s: float = 600.0  # ... up to this
    give_up_s: float = 86400.0  # an event not delivered this long after it was made fails
    secret_env: str = ""  # webhook: bearer token; email: SMTP password
    secret_file: Path | None = None
    # webhook
    url: str = ""
    url_env: str = ""  # a Slack webhook URL is itself a secret
    url_file: Path | None = None
    format: str = "generic"  # generic | slack | matrix | ntfy
    topic: str = ""  # ntfy
    # email
    host: str = ""
    port: int = 0  # 0: 465 with tls, 587 with starttls, 25 without
    security: str = "starttls"  # starttls | tls | none
    username: str = ""
    mail_from: str = ""
    to: tuple[str, ...] = ()
    # command
    argv: tuple[str, ...] = ()
    # webhook and email: a CA bundle to trust (a private CA); default: the system's
    ca_file: Path | None = None

    @property
    def smtp_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587}.get(self.security, 25)


# the keys each channel type takes besides the common ones
CHANNEL_KEYS = {
    "webhook": {"url", "url_env", "url_file", "format", "topic", "secret_env", "secret_file",
                "ca_file"},
    "email": {"host", "port", "security", "username", "mail_from", "to", "secret_env",
              "secret_file", "ca_file"},
    "command": {"argv"},
}
COMMON_CHANNEL_KEYS = {"type", "timeout_s", "retry_first_s", "retry_max_s", "give_up_s"}
INLINE_SECRETS = ("password", "token", "secret", "api_key")


@dataclass(frozen=True)
class Config:
    home: Path  # data dir: database, memory matrices, reports
    store_url: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    folders: tuple[WatchedFolder, ...] = ()
    notify: tuple[NotifyChannel, ...] = ()
    node: NodeConfig = field(default_factory=NodeConfig)
    source: Path | None = None  # the file it was read from

    def channel(self, name: str) -> NotifyChannel | None:
        return next((c for c in self.notify if c.name == name), None)

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
    (NodeConfig, "lease_s"): (1.0, 86400.0),  # up to a day
    (IngestConfig, "max_file_mb"): (1, 2**20),  # up to 1 TiB
    (IngestConfig, "debounce_s"): (0.0, 3600.0),
    (IngestConfig, "max_wait_s"): (0.1, 86400.0),  # and not below debounce_s
    (IngestConfig, "rescan_interval_s"): (1.0, 604800.0),  # up to a week
    (IngestConfig, "pdf_timeout_s"): (0.1, 86400.0),
    (SchedulerConfig, "misfire_grace_s"): (1, 31536000),  # up to a year
    (WatchedFolder, "poll_interval_s"): (0.1, 3600.0),
    (NotifyChannel, "timeout_s"): (0.1, 3600.0),
    (NotifyChannel, "retry_first_s"): (0.01, 3600.0),
    (NotifyChannel, "retry_max_s"): (0.01, 86400.0),  # and not below retry_first_s
    (NotifyChannel, "give_up_s"): (1.0, 2592000.0),  # up to 30 days
    (NotifyChannel, "port"): (0, 65535),
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


TUPLE_KEYS = ("include", "exclude", "digest_notify", "to", "argv")


def _build(cls, raw: dict, where: str, **fixed):
    """Make a config dataclass from a TOML table, refusing unknown keys and wrong types."""
    known = {f.name: f for f in fields(cls)}
    values = dict(fixed)
    for key, value in raw.items():
        if key not in known or key in fixed:
            raise ConfigError(f"{where}.{key}: unknown key",
                              hint=f"known keys: {', '.join(sorted(set(known) - set(fixed)))}")
        default = getattr(cls, key, None) if key not in TUPLE_KEYS else ()
        if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, int | float) and not isinstance(value, int | float)):
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        if (cls, key) in RANGES:
            check_number(f"{where}.{key}", value, type(default), RANGES[cls, key])
        if key in ("include", "exclude", "digest_notify", "to", "argv"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of strings")
            value = tuple(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        elif key in ("checkpoint", "base", "path", "socket", "reports_dir", "secret_file",
                     "url_file", "ca_file"):
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
    unknown = set(raw) - {"home", "store", "model", "ingest", "server", "scheduler", "folders",
                          "notify", "node"}
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
        raise ConfigError(f"{where}: model.text_model must name smollm2, smollm2-base, a "
                          "model folder or a .gguf file")
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
    notify = _notify_channels(raw.get("notify", {}), where)
    scheduler = _build(SchedulerConfig, raw.get("scheduler", {}), "scheduler")
    for name in scheduler.digest_notify:
        if name not in {c.name for c in notify}:
            raise ConfigError(f"{where}: scheduler.digest_notify names {name!r}, which is no "
                              "[notify.NAME] channel", hint=_channel_hint(notify))
    store_url = store.get("url", "")
    node = _node(raw.get("node", {}), store_url, where)
    return Config(
        home=Path(raw["home"]).expanduser() if "home" in raw else default_home(),
        store_url=store_url,
        node=node,
        model=model,
        ingest=ingest,
        server=_build(ServerConfig, raw.get("server", {}), "server"),
        scheduler=scheduler,
        folders=tuple(folders),
        notify=notify,
        source=path if path.exists() else None,
    )


def _node(raw, store_url: str, where: str) -> NodeConfig:
    """[node]: a role kbd knows, a name that can stand before a path in a source
    (web-1:/var/log/app.log:120), and a fleet role only on PostgreSQL."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: node must be a table [node]")
    node = _build(NodeConfig, raw, "node")
    if node.role not in ROLES:
        raise ConfigError(f"{where}: node.role must be {', '.join(ROLES)}, got {node.role!r}",
                          hint="all: one daemon does everything (the default); ingest: watch "
                               "and ingest; model: compress, answer, run standing questions")
    if node.name and not NODE_NAME.fullmatch(node.name):
        raise ConfigError(f"{where}: node.name must be a short name (letters, digits, '.', "
                          f"'_', '-', at most 63, no ':' or '/'), got {node.name!r}",
                          hint="leave it out to use this machine's host name")
    if node.fleet and not store_url.startswith("postgresql"):
        raise ConfigError(f"{where}: node.role = {node.role!r} needs a shared PostgreSQL "
                          "store, and this one is SQLite",
                          hint="SQLite is one host's store: set [store] url to a postgresql "
                               "URL, or leave node.role out (all)")
    return node


def _channel_hint(channels: Iterable[NotifyChannel]) -> str:
    names = [c.name for c in channels]
    return f"channels: {', '.join(names)}" if names else "no [notify.NAME] channel is configured"


def _notify_channels(raw, where: str) -> tuple[NotifyChannel, ...]:
    """[notify.NAME] tables -> channels, each checked for its type's keys and values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: notify must be tables [notify.NAME]")
    channels = []
    for name, table in raw.items():
        at = f"notify.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {at} must be a table")
        kind = table.get("type")
        if kind not in CHANNEL_TYPES:
            raise ConfigError(f"{where}: {at}.type must be {', '.join(CHANNEL_TYPES)}, "
                              f"got {kind!r}")
        for key in table:
            if key.lower() in INLINE_SECRETS:
                raise ConfigError(f"{where}: {at}.{key}: secrets are never written in the "
                                  "config", hint="name a file (secret_file) or an environment "
                                  "variable (secret_env) that holds it")
            if key not in COMMON_CHANNEL_KEYS | CHANNEL_KEYS[kind]:
                raise ConfigError(f"{where}: {at}.{key}: unknown key for a {kind} channel",
                                  hint="known keys: " + ", ".join(
                                      sorted(COMMON_CHANNEL_KEYS | CHANNEL_KEYS[kind])))
        channel = _build(NotifyChannel, {k: v for k, v in table.items() if k != "type"},
                         f"{where}: {at}", name=name, type=kind)
        _check_channel(channel, f"{where}: {at}")
        channels.append(channel)
    return tuple(channels)


def _check_channel(c: NotifyChannel, at: str) -> None:
    low, high = RANGES[NotifyChannel, "retry_max_s"]
    check_number(f"{at}.retry_max_s", c.retry_max_s, float, (max(c.retry_first_s, low), high),
                 hint=f"not below retry_first_s ({c.retry_first_s:g})")
    if c.secret_env and c.secret_file:
        raise ConfigError(f"{at}: give secret_env or secret_file, not both")
    if c.type == "webhook":
        given = [k for k in ("url", "url_env", "url_file") if getattr(c, k)]
        if len(given) != 1:
            raise ConfigError(f"{at}: a webhook needs exactly one of url, url_env, url_file")
        if c.url and not c.url.startswith(("http://", "https://")):
            raise ConfigError(f"{at}.url must start with http:// or https://, got {c.url!r}")
        if c.format not in WEBHOOK_FORMATS:
            raise ConfigError(f"{at}.format must be {', '.join(WEBHOOK_FORMATS)}, "
                              f"got {c.format!r}")
        if c.format == "ntfy" and not c.topic:
            raise ConfigError(f"{at}.topic is required for an ntfy webhook")
    elif c.type == "email":
        if not c.host or not c.mail_from or not c.to:
            raise ConfigError(f"{at}: an email channel needs host, mail_from and to")
        if c.security not in MAIL_SECURITY:
            raise ConfigError(f"{at}.security must be {', '.join(MAIL_SECURITY)}, "
                              f"got {c.security!r}")
        if (c.secret_env or c.secret_file) and not c.username:
            raise ConfigError(f"{at}: a password needs a username to log in with")
    elif not c.argv or not c.argv[0]:
        raise ConfigError(f"{at}.argv must be the program and its arguments, as a list",
                          hint='as in argv = ["notify-send", "kbd"]; no shell runs it')


def read_secret(channel: NotifyChannel, env: str, file: Path | None, what: str) -> str:
    """A secret from the environment variable or the file the channel names ("" if it
    names neither); ConfigError naming the key when it is missing or empty."""
    at = f"notify.{channel.name}"
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(f"{at}: {what} comes from ${env}, which is not set",
                              hint=f"set {env} in the daemon's environment")
        return value
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{at}: cannot read the {what} file {file}: {e.strerror or e}",
                              hint="the file must be readable by kbd") from e
        if not value:
            raise ConfigError(f"{at}: the {what} file {file} is empty")
        return value
    return ""


def check_secrets(channels: Iterable[NotifyChannel]) -> None:
    """Every secret the channels name can be read (the daemon checks this at start)."""
    for c in channels:
        read_secret(c, c.secret_env, c.secret_file, "secret")
        read_secret(c, c.url_env, c.url_file, "url")
