"""`kbd init`, `kbd watch add/list/rm` and `kbd model pull`, with a temporary KBD_HOME.

Nothing here touches the network: the offline cases use HF_HUB_OFFLINE=1 or a local port where
nothing listens, and the one real download comes from a fake hub on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.harness import wait_for

from kbd import configfile
from kbd.cli import cli
from kbd.cli.setup import ModelFolders, point_config_at
from kbd.config import Config, ConfigError, load_config

ROOT = Path(__file__).parent.parent
# the real entry point, as `kbd` runs it
KBD = [sys.executable, "-c", "from kbd.cli import main; main()"]


@pytest.fixture
def home(kbd_home, monkeypatch) -> Path:
    """The test's KBD_HOME (tests/conftest.py), without the variables that change what the
    commands say or where they download from."""
    for name in ("KBD_DEBUG", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return kbd_home


def kbd(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_kbd(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*KBD, *args], env=env, capture_output=True, text=True, timeout=120)


# -- kbd init ---------------------------------------------------------------------------------


def test_init_writes_config_and_creates_folders(home):
    result = kbd("init", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    data = home / "data"
    assert shown["config"] == str(home / "config.toml")
    assert shown["created"] == [str(data), str(data / "reports"), str(data / "models")]
    assert all(Path(p).is_dir() for p in shown["created"])
    config = load_config(home / "config.toml")
    assert config.home == data and config.folders == ()
    text = (home / "config.toml").read_text()
    assert f'home = "{data}"' in text and "# One table per watched folder" in text


def test_init_refuses_to_overwrite_and_force_replaces(home):
    assert kbd("init").exit_code == 0
    config = home / "config.toml"
    config.write_text(config.read_text() + "# mine\n")
    again = kbd("init")
    assert again.exit_code == 1
    assert f"{config} exists already" in again.output and "--force" in again.output
    assert config.read_text().endswith("# mine\n")
    forced = kbd("init", "--force")
    assert forced.exit_code == 0, forced.output
    assert "# mine" not in config.read_text()
    assert (home / "config.toml.bak").read_text().endswith("# mine\n")
    assert "exists  " in forced.output  # the folders were there already


def user_env(user_home: Path, **variables: str) -> dict:
    """The environment of a person whose home is `user_home`, without kbd's or XDG's
    variables unless given."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("KBD_", "XDG_"))}
    return kept | {"HOME": str(user_home)} | variables


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_init_leaves_nothing_other_users_may_read(tmp_path, umask):
    """Issue 20, item 2: the config and data folders init makes are 0700 (their missing
    parents too), config.toml and its backup 0600, whatever the umask."""
    user_home = tmp_path / "user"
    user_home.mkdir()
    for args in (["init"], ["init", "--force"]):
        done = subprocess.run([*KBD, *args], env=user_env(user_home), capture_output=True,
                              text=True, timeout=120, umask=umask)
        assert done.returncode == 0, done.stderr
    made = [".config", ".config/kbd", ".config/kbd/config.toml", ".config/kbd/config.toml.bak",
            ".local", ".local/share", ".local/share/kbd", ".local/share/kbd/reports",
            ".local/share/kbd/models"]
    modes = {name: oct((user_home / name).stat().st_mode & 0o777) for name in made}
    assert modes == {name: oct(0o600 if ".toml" in name else 0o700) for name in made}


def test_empty_xdg_variables_mean_unset(tmp_path):
    """Issue 20, item 8: XDG_CONFIG_HOME= is not the current folder (the XDG spec)."""
    user_home, here = tmp_path / "user", tmp_path / "here"
    user_home.mkdir()
    here.mkdir()
    empty = dict.fromkeys(["XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
                           "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"], "")
    done = subprocess.run([*KBD, "init", "--json"], env=user_env(user_home, **empty), cwd=here,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["config"] == str(user_home / ".config/kbd/config.toml")
    assert shown["data"] == str(user_home / ".local/share/kbd")
    assert list(here.iterdir()) == []


def test_unusable_xdg_variables_are_unset_for_libraries(monkeypatch, tmp_path):
    """Libraries read XDG_CACHE_HOME themselves (the model hub's cache): the CLI unsets an
    empty or relative one, which the XDG spec says to ignore, and keeps an absolute one."""
    from kbd.config import drop_unusable_xdg_variables

    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    drop_unusable_xdg_variables()
    assert "XDG_CACHE_HOME" not in os.environ and "XDG_STATE_HOME" not in os.environ
    assert os.environ["XDG_DATA_HOME"] == str(tmp_path)
    assert Config(home=tmp_path).socket_path == tmp_path / "run" / "kbd.sock"


def test_init_writes_where_config_points(home, tmp_path):
    elsewhere = tmp_path / "etc" / "kbd.toml"
    result = kbd("--config", str(elsewhere), "init", "--home", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert load_config(elsewhere).home == tmp_path / "data"
    assert not (home / "config.toml").exists()


def test_example_config_is_packaged_and_loads():
    top = (ROOT / "config.example.toml").read_text()
    assert top == configfile.example_text(), "copy config.example.toml to kbd/data/"
    config = load_config(ROOT / "config.example.toml")
    assert config.folders == () and config.model.checkpoint is None


def test_example_config_documents_every_key():
    """Every field of the config dataclasses appears in the example, set or commented."""
    from dataclasses import fields

    from kbd.config import Config
    from kbd.folders import WatchedFolder

    text = (ROOT / "config.example.toml").read_text()
    tables = [type(getattr(Config(home=Path("/")), f.name)) for f in fields(Config)
              if f.name in ("model", "ingest", "server", "scheduler")]
    for cls in [*tables, WatchedFolder]:
        for f in fields(cls):
            assert f"{f.name} = " in text, f"{cls.__name__}.{f.name} is not in config.example.toml"


# -- config values ----------------------------------------------------------------------------

NUMBERS = [  # (table, key = value as TOML, what the error must say)
    ("ingest", "debounce_s = 1e308", "ingest.debounce_s = 1e+308 is out of range: it must be "
                                     "from 0 to 3600"),
    ("ingest", "debounce_s = -5", "ingest.debounce_s = -5 is out of range"),
    ("ingest", "debounce_s = inf", "ingest.debounce_s = inf is out of range"),
    ("ingest", "debounce_s = nan", "ingest.debounce_s = nan is out of range"),
    ("ingest", 'debounce_s = "2"', "ingest.debounce_s: expected float, got '2'"),
    ("ingest", "max_file_mb = -1", "ingest.max_file_mb = -1 is out of range: it must be a "
                                   "whole number from 1 to 1.04858e+06"),
    ("ingest", "max_file_mb = 1.5", "ingest.max_file_mb = 1.5 is out of range: it must be a "
                                    "whole number"),
    ("ingest", "max_file_mb = true", "ingest.max_file_mb: expected int, got True"),
    ("ingest", "rescan_interval_s = 0", "ingest.rescan_interval_s = 0 is out of range: it must "
                                        "be from 1 to 604800"),
    ("ingest", "max_wait_s = 1.0", "ingest.max_wait_s = 1.0 is out of range: it must be from "
                                   "2 to 86400\nhint: not below ingest.debounce_s (2)"),
    ("ingest", "pdf_timeout_s = 0", "ingest.pdf_timeout_s = 0 is out of range"),
    ("model", "compress_batch_size = 0", "model.compress_batch_size = 0 is out of range: it "
                                         "must be a whole number from 1 to 4096"),
    ("scheduler", "misfire_grace_s = -1", "scheduler.misfire_grace_s = -1 is out of range"),
    ("folders", 'path = "/tmp"\npoll_interval_s = 0', "folders[0].poll_interval_s = 0 is out "
                                                      "of range: it must be from 0.1 to 3600"),
]


@pytest.mark.parametrize(("table", "setting", "said"), NUMBERS,
                         ids=[setting.split("\n")[-1] for _, setting, _ in NUMBERS])
def test_a_number_out_of_range_is_refused_naming_key_value_and_range(home, table, setting,
                                                                      said):
    config = home / "config.toml"
    home.mkdir()
    header = "[[folders]]" if table == "folders" else f"[{table}]"
    config.write_text(f"{header}\n{setting}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert said in str(refused.value)


def test_every_numeric_key_has_a_range():
    """A numeric key added later without a range would take any value again."""
    from dataclasses import fields

    from kbd.config import RANGES, IngestConfig, ModelConfig, SchedulerConfig
    from kbd.folders import WatchedFolder

    for cls in (ModelConfig, IngestConfig, SchedulerConfig, WatchedFolder):
        for f in fields(cls):
            if isinstance(f.default, int | float) and not isinstance(f.default, bool):
                low, high = RANGES[cls, f.name]
                assert low <= f.default <= high, f"{cls.__name__}.{f.name}"


def test_the_daemon_refuses_a_bad_number_at_start(home):
    """The value that killed the watcher thread while /status said healthy."""
    home.mkdir()
    (home / "config.toml").write_text('[ingest]\ndebounce_s = 1e308\n')
    result = run_kbd("daemon", env=dict(os.environ))
    assert result.returncode == 1
    assert "ingest.debounce_s = 1e+308 is out of range: it must be from 0 to 3600" in \
        result.stderr
    assert not (home / "data").exists()  # refused before it made anything


def test_a_watched_path_that_is_a_file_is_refused(home, tmp_path):
    log = tmp_path / "app.log"
    log.write_text("one line\n")
    home.mkdir()
    (home / "config.toml").write_text(f'[[folders]]\npath = "{log}"\n')
    result = run_kbd("daemon", env=dict(os.environ))
    assert result.returncode == 1
    assert f"watched path {log} is a file, not a folder" in result.stderr
    assert f'path = "{tmp_path}" with include = ["app.log"]' in result.stderr
    assert not (home / "data").exists()
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        configfile.add_folder(home / "config.toml", log)
    assert run_kbd("watch", "rm", str(log), env=dict(os.environ)).returncode == 0


# -- kbd watch --------------------------------------------------------------------------------


def test_watch_add_list_rm_keeps_hand_written_comments(home, tmp_path):
    assert kbd("init").exit_code == 0
    config = home / "config.toml"
    text = config.read_text().replace("debounce_s = 2.0 ", "debounce_s = 2.0 # tuned by hand ")
    text += "\n# my notes: prod logs go below\n"
    config.write_text(text)
    logs, reports = tmp_path / "logs", tmp_path / "reports"
    logs.mkdir()
    added = kbd("watch", "add", str(logs), "--kind", "log", "--exclude", "*.gz", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["added"]["exclude"] == ["*.gz"]
    result = kbd("watch", "add", str(reports), "--kind", "report", "--include", "*.md",
                 "--include", "*.pdf", "--polling")
    assert result.exit_code == 0, result.output
    assert "does not exist yet" in result.output
    assert "applies when it next starts" in result.output
    listed = json.loads(kbd("watch", "list", "--json").stdout)
    assert [(f["path"], f["kind"], f["include"], f["exclude"], f["polling"]) for f in listed] == [
        (str(logs), "log", ["*"], ["*.gz"], False),
        (str(reports), "report", ["*.md", "*.pdf"], [], True),
    ]
    assert "# tuned by hand" in config.read_text() and "# my notes" in config.read_text()
    bare = kbd("watch")  # a bare group lists
    assert bare.exit_code == 0 and f"{logs} (log, exclude *.gz)" in bare.output
    assert kbd("watch", "rm", str(logs)).exit_code == 0
    assert kbd("watch", "rm", str(reports) + "/").exit_code == 0
    # all as it was, but for the blank line put before the first [[folders]]
    assert config.read_text() == text + "\n"
    assert "no watched folders" in kbd("watch", "list").output


def test_watch_add_duplicate_fails_naming_the_folder(home, tmp_path, monkeypatch):
    assert kbd("init").exit_code == 0
    assert kbd("watch", "add", str(tmp_path / "logs")).exit_code == 0
    before = (home / "config.toml").read_text()
    monkeypatch.chdir(tmp_path)
    again = kbd("watch", "add", "logs/", "--kind", "log")  # the same folder, spelled otherwise
    assert again.exit_code == 1
    assert f"{tmp_path / 'logs'} is already watched" in again.output
    assert (home / "config.toml").read_text() == before


def test_watch_add_of_a_folder_named_not_utf8_is_refused(home, tmp_path):
    assert kbd("init").exit_code == 0
    before = (home / "config.toml").read_text()
    result = kbd("watch", "add", os.fsdecode(os.fsencode(tmp_path) + b"/logs\xff"))
    assert result.exit_code == 1
    assert "config.toml is UTF-8 text and cannot name a folder" in result.output
    assert (home / "config.toml").read_text() == before


def test_watch_rm_of_a_folder_not_watched_fails(home, tmp_path):
    assert kbd("init").exit_code == 0
    result = kbd("watch", "rm", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'nowhere'} is not watched" in result.output
    assert "kbd watch list" in result.output


def test_watch_add_bad_kind_is_a_usage_error(home, tmp_path):
    assert kbd("init").exit_code == 0
    result = kbd("watch", "add", str(tmp_path), "--kind", "csv")
    assert result.exit_code == 2
    assert "Invalid value for '--kind'" in result.output


def test_watch_add_without_config_says_kbd_init(home, tmp_path):
    result = kbd("watch", "add", str(tmp_path))
    assert result.exit_code == 1
    assert "no config file" in result.output and "kbd init" in result.output


def test_a_bad_edit_leaves_the_file_as_it_was(home):
    assert kbd("init").exit_code == 0
    config = home / "config.toml"
    before = config.read_bytes()

    def misspell(doc, current):
        doc["ingest"]["debounce"] = 1.0

    with pytest.raises(ConfigError, match=r"left as it was: ingest\.debounce: unknown key"):
        configfile.edit(config, misspell)
    assert config.read_bytes() == before
    assert sorted(p.name for p in home.iterdir()) == ["config.toml", "data"]


def test_edits_keep_the_file_mode(home, tmp_path):
    assert kbd("init").exit_code == 0
    config = home / "config.toml"
    config.chmod(0o640)
    assert kbd("watch", "add", str(tmp_path)).exit_code == 0
    assert config.stat().st_mode & 0o777 == 0o640


FAKE_DAEMON = """
import signal, sys, time
from pathlib import Path

signal.signal(signal.SIGHUP, lambda *_: Path(sys.argv[1]).write_text("reloaded"))
Path(sys.argv[2]).write_text("ready")
time.sleep(60)
"""


def test_watch_add_tells_a_running_daemon(home, tmp_path):
    assert kbd("init").exit_code == 0
    script = tmp_path / "fake_kbd_daemon.py"
    script.write_text(FAKE_DAEMON)
    reloaded, ready = tmp_path / "reloaded", tmp_path / "ready"
    daemon = subprocess.Popen([sys.executable, str(script), str(reloaded), str(ready)])
    try:
        assert wait_for(ready.exists)
        (home / "data" / "kbd.pid").write_text(f"{daemon.pid}\n")
        result = kbd("watch", "add", str(tmp_path), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["daemon_pid"] == daemon.pid
        assert wait_for(reloaded.exists), "the daemon got no SIGHUP"
        removed = kbd("watch", "rm", str(tmp_path))
        assert f"told the daemon (pid {daemon.pid}) to reload" in removed.output
    finally:
        daemon.kill()
        daemon.wait()


def test_a_stale_pid_file_is_not_signalled(home, tmp_path):
    """After a crash the pid may belong to another program: SIGHUP would kill it."""
    assert kbd("init").exit_code == 0
    other = subprocess.Popen(["sleep", "60"])
    try:
        (home / "data" / "kbd.pid").write_text(f"{other.pid}\n")
        result = kbd("watch", "add", str(tmp_path))
        assert result.exit_code == 0 and "no daemon running" in result.output
        time.sleep(0.2)
        assert other.poll() is None, "sleep was signalled"
    finally:
        other.kill()
        other.wait()
    (home / "data" / "kbd.pid").write_text(f"{other.pid}\n")  # dead now
    assert "no daemon running" in kbd("watch", "rm", str(tmp_path)).output


# -- kbd model pull ---------------------------------------------------------------------------


@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "nothing-listens"])
def test_model_pull_offline_fails_fast_with_copy_instructions(home, offline):
    assert kbd("init").exit_code == 0
    before = (home / "config.toml").read_text()
    start = time.monotonic()
    done = run_kbd("model", "pull", env=os.environ | offline)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    models = home / "data" / "models"
    for text in ("cannot download", "hint: copy the files by hand",
                 "hf download apple/CLaRa-7B-E2E --include 'compression-16/*'",
                 "hf download mistralai/Mistral-7B-Instruct-v0.2",
                 f"copy both folders into {models}",
                 str(home / "config.toml"), "[model]",
                 f'checkpoint = "{models}/CLaRa-7B-E2E/compression-16"',
                 f'base = "{models}/Mistral-7B-Instruct-v0.2"'):
        assert text in done.stderr
    assert (home / "config.toml").read_text() == before


def test_model_pull_without_config_says_kbd_init(home):
    result = kbd("model", "pull")
    assert result.exit_code == 1 and "kbd init" in result.output


def test_point_config_at_sets_model_folders(home, tmp_path):
    assert kbd("init").exit_code == 0
    folders = ModelFolders("apple/CLaRa-7B-E2E", "128", "mistralai/Mistral-7B-Instruct-v0.2",
                           tmp_path / "models")
    point_config_at(home / "config.toml", folders)
    model = load_config(home / "config.toml").model
    assert model.checkpoint == tmp_path / "models/CLaRa-7B-E2E/compression-128"
    assert model.base == tmp_path / "models/Mistral-7B-Instruct-v0.2"
    assert "# Local folder of the base model" in (home / "config.toml").read_text()
    point_config_at(home / "config.toml", folders)  # again: the keys are replaced, not added
    assert (home / "config.toml").read_text().count("\ncheckpoint = ") == 1


HUB_FILES = {
    "apple/CLaRa-7B-E2E": {
        "compression-16/config.json": b'{"model_type": "CLaRa"}',
        "compression-16/adapters.pth": b"a" * 3000,
        "compression-128/config.json": b"{}",
        "README.md": b"readme",
    },
    "mistralai/Mistral-7B-Instruct-v0.2": {
        "config.json": b"{}",
        "model-00001-of-00001.safetensors": b"w" * 5000,
        "model.safetensors.index.json": b"{}",
        "consolidated.safetensors": b"c" * 5000,
        "pytorch_model-00001-of-00001.bin": b"b" * 5000,
        "tokenizer.model": b"t",
        "tokenizer_config.json": b"{}",
    },
}
HUB_SHA = "0123456789abcdef" * 2 + "01234567"


class FakeHub(BaseHTTPRequestHandler):
    """The few hub endpoints snapshot_download reads: revision info, tree, resolve."""

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        for repo, files in HUB_FILES.items():
            if path in (f"/api/models/{repo}", f"/api/models/{repo}/revision/main"):
                return self.reply(json.dumps({"id": repo, "sha": HUB_SHA, "siblings": [
                    {"rfilename": name} for name in files]}).encode())
            if path.startswith(f"/api/models/{repo}/tree/"):
                return self.reply(json.dumps([
                    {"type": "file", "path": name, "size": len(body),
                     "oid": hashlib.sha1(body).hexdigest()} for name, body in files.items()
                ]).encode())
            if path.startswith(f"/{repo}/resolve/{HUB_SHA}/"):
                body = files[path.split(f"/resolve/{HUB_SHA}/", 1)[1]]
                return self.reply(body, {"X-Repo-Commit": HUB_SHA,
                                         "ETag": f'"{hashlib.sha1(body).hexdigest()}"'})
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, body: bytes, headers: dict | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_model_pull_downloads_only_what_is_needed(home, tmp_path, fake_hub):
    """A real snapshot_download from a hub on 127.0.0.1, in a subprocess whose HF_HOME is
    temporary (hub writes refs into its cache even with local_dir)."""
    assert kbd("init").exit_code == 0
    env = os.environ | {"HF_ENDPOINT": fake_hub, "HF_HOME": str(tmp_path / "hf")}
    done = run_kbd("model", "pull", "--json", env=env)
    assert done.returncode == 0, done.stderr
    models = home / "data" / "models"
    shown = json.loads(done.stdout)
    assert shown["checkpoint"] == str(models / "CLaRa-7B-E2E" / "compression-16")
    got = sorted(str(p.relative_to(models)) for p in models.rglob("*")
                 if p.is_file() and ".cache" not in p.parts)
    assert got == [
        "CLaRa-7B-E2E/compression-16/adapters.pth", "CLaRa-7B-E2E/compression-16/config.json",
        "Mistral-7B-Instruct-v0.2/config.json",
        "Mistral-7B-Instruct-v0.2/model-00001-of-00001.safetensors",
        "Mistral-7B-Instruct-v0.2/model.safetensors.index.json",
        "Mistral-7B-Instruct-v0.2/tokenizer.model",
        "Mistral-7B-Instruct-v0.2/tokenizer_config.json",
    ]
    model = load_config(home / "config.toml").model
    assert model.checkpoint == models / "CLaRa-7B-E2E" / "compression-16"
    assert model.base == models / "Mistral-7B-Instruct-v0.2"
    assert model.active_engine == shown["engine"] == "clara"  # kbd init's default was text
    again = run_kbd("model", "pull", env=env)  # complete already: nothing to fetch, same config
    assert again.returncode == 0, again.stderr
    assert load_config(home / "config.toml").model == model


def test_model_pull_rejects_a_repo_without_the_compression(home, tmp_path, fake_hub):
    assert kbd("init").exit_code == 0
    env = os.environ | {"HF_ENDPOINT": fake_hub, "HF_HOME": str(tmp_path / "hf")}
    done = run_kbd("model", "pull", "mistralai/Mistral-7B-Instruct-v0.2", env=env)
    assert done.returncode == 1
    assert "has no compression-16/config.json" in done.stderr
    assert load_config(home / "config.toml").model.checkpoint is None


def test_sighup_helper_ignores_nonsense_pids(home):
    from kbd.cli.setup import daemon_pid

    data = home / "data"
    data.mkdir(parents=True)
    for text in ("", "abc", "0", "-1", str(os.getpid() + 10**7)):
        (data / "kbd.pid").write_text(text)
        assert daemon_pid(data) is None, text
