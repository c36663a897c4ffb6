"""Setting kbd up: `kbd init`, `kbd watch add/list/rm`, `kbd model pull`.

They edit config.toml through kbd.configfile (comments kept, every edit validated first) and
tell a running daemon to reload with SIGHUP. kbd/cli/__init__.py adds init and watch to the
group, kbd/cli/model.py adds pull to `kbd model`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from kbd import configfile
from kbd.cli.output import human_errors, print_json
from kbd.config import Config, default_config_path, default_home, load_config
from kbd.errors import KbdError
from kbd.folders import WatchedFolder
from kbd.private import private_folder, write_private

DEFAULT_REPO = "apple/CLaRa-7B-E2E"
DEFAULT_BASE_REPO = "mistralai/Mistral-7B-Instruct-v0.2"
# The base's configs, tokenizer and safetensors weights. `model*.safetensors`, not
# `*.safetensors`: the Mistral repo also holds consolidated.safetensors, the same 14.5 GB again
# for mistral-inference. The pytorch_model-*.bin copies are left out too.
BASE_PATTERNS = ["*.json", "model*.safetensors", "tokenizer*"]
PROBE_TIMEOUT_S = 3.0


def config_file() -> Path:
    """The config file this run uses: --config or $KBD_CONFIG, else the default path."""
    return click.get_current_context().find_root().obj or default_config_path()


def absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


# -- kbd init ---------------------------------------------------------------------------------


@click.command("init")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Data folder (default: $KBD_HOME/data, else ~/.local/share/kbd).")
@click.option("--force", is_flag=True, help="Replace an existing config (kept as .bak).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def init(home: Path | None, force: bool, as_json: bool) -> None:
    """Write config.toml (every key with its default) and create the data, reports and
    models folders.

    \b
        kbd init
        KBD_HOME=/var/lib/kbd kbd init --json
    """
    path = config_file()
    if path.exists() and not force:
        raise KbdError(f"{path} exists already",
                       hint="kbd init --force replaces it (the old file is kept as .bak)",
                       code="exists")
    backup = backup_config(path) if path.exists() else None
    home = absolute(home or default_home())
    configfile.write_initial_config(path, home)
    folders = {"data": home, "reports": home / "reports", "models": home / "models"}
    created = [str(folder) for folder in folders.values() if make_dir(folder)]
    result = {"config": str(path), "backup": str(backup) if backup else None,
              **{name: str(folder) for name, folder in folders.items()}, "created": created}
    if as_json:
        print_json(result)
        return
    click.echo(f"wrote {path}" + (f" (the old one is {backup})" if backup else ""))
    for folder in folders.values():
        click.echo(f"{'created' if str(folder) in created else 'exists '} {folder}")
    click.echo("next: kbd watch add PATH, kbd daemon (the text engine, on any CPU); "
               "kbd model pull for CLaRa on a GPU")


def backup_config(path: Path) -> Path:
    backup = path.with_name(path.name + ".bak")
    write_private(backup, path.read_text())
    return backup


def make_dir(folder: Path) -> bool:
    """Create `folder` (and its parents) 0700; True when it was not there before. One that
    an older kbd left open to other users is tightened."""
    existed = folder.is_dir()
    try:
        private_folder(folder)
    except OSError as e:
        raise KbdError(f"cannot create {folder}: {e.strerror}",
                       hint="pick another folder with --home or $KBD_HOME") from e
    return not existed


# -- kbd watch --------------------------------------------------------------------------------


@click.group("watch", invoke_without_command=True)
@click.pass_context
def watch(ctx: click.Context) -> None:
    """Folders kbd watches: add, list (the default), rm. A running daemon is told (SIGHUP)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(watch_list)


@watch.command("add")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", default="auto", show_default=True,
              type=click.Choice(["log", "report", "auto"]),
              help="How its files are parsed; auto decides by name and content.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only these files (relative path or name; repeatable). Default: all.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Skip these files (wins over --include; repeatable).")
@click.option("--polling", is_flag=True,
              help="Poll instead of inotify: network and container mounts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def watch_add(path: Path, kind: str, include: tuple[str, ...], exclude: tuple[str, ...],
              polling: bool, as_json: bool) -> None:
    """Watch the folder PATH: ingest its files and follow their changes.

    \b
        kbd watch add /var/log/myapp --kind log --exclude '*.gz'
        kbd watch add /mnt/share/reports --kind report --polling
    """
    config_path = config_file()
    folder = configfile.add_folder(config_path, path, kind, include, exclude, polling)
    pid, told = reload_daemon(load_config(config_path))
    if as_json:
        print_json({"added": folder_json(folder), "daemon_pid": pid, "reloaded": pid is not None})
        return
    click.echo(f"watching {describe(folder)}")
    if not folder.path.is_dir():
        click.echo(f"{folder.path} does not exist yet: it is watched once it appears")
    click.echo(told)


@watch.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def watch_list(as_json: bool) -> None:
    """List the watched folders with their kind and globs.

        kbd watch list --json
    """
    folders = configfile.list_folders(config_file())
    if as_json:
        print_json([folder_json(f) for f in folders])
        return
    if not folders:
        click.echo("no watched folders: kbd watch add PATH")
    for folder in folders:
        click.echo(describe(folder))


@watch.command("rm")
@click.argument("path", type=click.Path(path_type=Path))  # a file watched by mistake goes too
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def watch_rm(path: Path, as_json: bool) -> None:
    """Stop watching the folder PATH. Its documents stay in the store.

        kbd watch rm /var/log/myapp
    """
    config_path = config_file()
    folder = configfile.remove_folder(config_path, path)
    pid, told = reload_daemon(load_config(config_path))
    if as_json:
        print_json({"removed": folder_json(folder), "daemon_pid": pid,
                    "reloaded": pid is not None})
        return
    click.echo(f"no longer watching {folder.path}")
    click.echo(told)


def folder_json(folder: WatchedFolder) -> dict:
    return {"path": str(folder.path), "kind": folder.kind, "include": list(folder.include),
            "exclude": list(folder.exclude), "polling": folder.polling,
            "poll_interval_s": folder.poll_interval_s, "follow_symlinks": folder.follow_symlinks}


def describe(folder: WatchedFolder) -> str:
    extras = [folder.kind]
    if folder.include != WatchedFolder.include:
        extras.append("include " + " ".join(folder.include))
    if folder.exclude:
        extras.append("exclude " + " ".join(folder.exclude))
    if folder.polling:
        extras.append(f"polling every {folder.poll_interval_s:g} s")
    if folder.follow_symlinks:
        extras.append("follows symlinks out of the watched folders")
    return f"{folder.path} ({', '.join(extras)})"


def reload_daemon(config: Config) -> tuple[int | None, str]:
    """SIGHUP the daemon of this data folder if one runs: (its pid or None, what happened)."""
    pid = daemon_pid(config.home)
    if pid is None:
        return None, "no daemon running: the change applies when it next starts"
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        return None, (f"the daemon (pid {pid}) runs as another user: reload it with "
                      "`systemctl reload kbd`")
    except ProcessLookupError:
        return None, "no daemon running: the change applies when it next starts"
    return pid, f"told the daemon (pid {pid}) to reload"


def daemon_pid(home: Path) -> int | None:
    """The pid in <home>/kbd.pid (the daemon writes it) when that process is alive and is
    kbd. A pid file left by a crash may name a pid reused by another program, which SIGHUP
    would kill; hence the command-line check."""
    try:
        pid = int((home / "kbd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:  # kill(0) and kill(-1) signal whole process groups
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid if runs_kbd(pid) else None


def runs_kbd(pid: int) -> bool:
    try:
        return b"kbd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except PermissionError:  # /proc mounted with hidepid
        return True
    except FileNotFoundError:  # gone, or no /proc at all (then trust the pid file)
        return not Path("/proc/self").exists()


# -- kbd model pull ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFolders:
    repo: str
    compression: str
    base_repo: str
    models_dir: Path

    @property
    def repo_dir(self) -> Path:
        return self.models_dir / self.repo.rsplit("/", 1)[-1]

    @property
    def checkpoint(self) -> Path:
        return self.repo_dir / f"compression-{self.compression}"

    @property
    def base(self) -> Path:
        return self.models_dir / self.base_repo.rsplit("/", 1)[-1]


@click.command("pull")
@click.argument("repo", default=DEFAULT_REPO)
@click.option("--compression", default="16", show_default=True, type=click.Choice(["16", "128"]),
              help="compression-16 (16 memory vectors per passage) or compression-128 (2).")
@click.option("--base-repo", default=DEFAULT_BASE_REPO, show_default=True,
              help="The base model the checkpoint adapts.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the two folders go (default: <data folder>/models).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def model_pull(repo: str, compression: str, base_repo: str, models_dir: Path | None,
               as_json: bool) -> None:
    """Download a CLaRa checkpoint and its base model, then point the config at them.

    Resumable: run it again after an interruption. The base model is gated: accept its
    licence on huggingface.co and set HF_TOKEN. Without network it stops at once and says
    which folders to copy by hand and which config keys to set.

    \b
        kbd model pull
        kbd model pull apple/CLaRa-7B-E2E --compression 128 --models-dir /srv/models
    """
    config_path = config_file()
    if not config_path.exists():  # checked before gigabytes are downloaded, not after
        raise KbdError(f"no config file at {config_path}", hint="`kbd init` writes one")
    config = load_config(config_path)
    folders = ModelFolders(repo, compression, base_repo,
                           absolute(models_dir or config.home / "models"))
    endpoint = hub_endpoint()
    by_hand = copy_by_hand_hint(folders, config_path)
    reason = offline_reason(endpoint, repo)
    if reason:
        raise KbdError(f"cannot download from {endpoint}: {reason}", hint=by_hand,
                       code="offline")
    download(repo, folders.repo_dir, [f"compression-{compression}/*"], endpoint, by_hand)
    if not (folders.checkpoint / "config.json").is_file():
        raise KbdError(f"{repo} has no compression-{compression}/config.json",
                       hint="is it a CLaRa checkpoint? apple/CLaRa-7B-E2E is the default")
    download(base_repo, folders.base, BASE_PATTERNS, endpoint, by_hand)
    point_config_at(config_path, folders)
    pid = daemon_pid(config.home)
    engine = load_config(config_path).model.active_engine
    if as_json:
        print_json({"checkpoint": str(folders.checkpoint), "base": str(folders.base),
                    "config": str(config_path), "daemon_pid": pid, "engine": engine})
        return
    click.echo(f"checkpoint: {folders.checkpoint}\nbase: {folders.base}")
    click.echo(f"{config_path}: [model] checkpoint and base set")
    if engine != "clara":
        click.echo(f'{config_path} says engine = "{engine}": set engine = "clara" (or remove '
                   "the line) to answer with CLaRa")
    if pid is not None:
        click.echo(f"restart the daemon (pid {pid}) to load the model "
                   "(systemctl [--user] restart kbd)")


def point_config_at(config_path: Path, folders: ModelFolders) -> None:
    """Set [model] checkpoint and base to the downloaded (or hand-copied) folders."""
    configfile.set_model_paths(config_path, folders.checkpoint, folders.base)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_reason(endpoint: str, repo: str) -> str | None:
    """Why the hub cannot be used now, or None. Read from the environment each time:
    huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    return probe(f"{endpoint}/api/models/{repo}", PROBE_TIMEOUT_S)


def probe(url: str, timeout_s: float) -> str | None:
    """None when `url` answers at all (any HTTP status) within timeout_s, else why not. The
    request runs in a daemon thread so a stalled DNS lookup cannot hold us past the limit."""
    outcome: list[str | None] = []

    def request() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s)
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered; access problems are reported by the download
        except urllib.error.URLError as e:
            outcome.append(str(e.reason))
        except (OSError, ValueError) as e:
            outcome.append(str(e))

    thread = threading.Thread(target=request, name="kbd-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def copy_by_hand_hint(folders: ModelFolders, config_path: Path) -> str:
    includes = " ".join(f"--include '{pattern}'" for pattern in BASE_PATTERNS)
    return (
        "copy the files by hand. On a machine with network access:\n"
        f"  hf download {folders.repo} --include 'compression-{folders.compression}/*' "
        f"--local-dir {folders.repo_dir.name}\n"
        f"  hf download {folders.base_repo} {includes} --local-dir {folders.base.name}\n"
        "  (the base model is gated: accept its licence on huggingface.co, set HF_TOKEN)\n"
        f"copy both folders into {folders.models_dir}/, then set in {config_path}:\n"
        "  [model]\n"
        f'  checkpoint = "{folders.checkpoint}"\n'
        f'  base = "{folders.base}"'
    )


def download(repo: str, local_dir: Path, patterns: list[str], endpoint: str,
             by_hand: str) -> None:
    """snapshot_download into local_dir (it resumes partial files); errors for people."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    try:
        snapshot_download(repo, local_dir=local_dir, allow_patterns=patterns,
                          endpoint=endpoint, tqdm_class=progress_bar())
    except GatedRepoError as e:
        raise KbdError(f"{repo} is gated and this account has no access",
                       hint=f"accept its licence at {endpoint}/{repo}, then set HF_TOKEN "
                       "(or run `hf auth login`)", code="download") from e
    except RepositoryNotFoundError as e:
        raise KbdError(f"{repo}: no such repository on {endpoint} (or it is private)",
                       hint="check the name; a private one needs HF_TOKEN",
                       code="download") from e
    # HfHubHTTPError's other base is its HTTP library's HTTPError (httpx in hub 1.x, httpx2 in
    # 2.x), the base of that library's connection and timeout errors as well.
    except (OSError, *HfHubHTTPError.__bases__) as e:
        raise KbdError(f"downloading {repo} failed: {e}",
                       hint="run `kbd model pull` again to resume, or " + by_hand,
                       code="download") from e


def progress_bar() -> type:
    """tqdm bars on a terminal, silent otherwise. A plain tqdm subclass on purpose: hub's own
    class obeys HF_HUB_DISABLE_PROGRESS_BARS, which `cli` sets to keep weight loading quiet."""
    from tqdm.auto import tqdm

    show = sys.stderr.isatty()

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = not show
            super().__init__(*args, **kwargs)

    Bar.set_lock(threading.RLock())  # as hub does: tqdm's default lock starts a helper process
    return Bar
