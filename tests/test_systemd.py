"""The unit files in systemd/: `systemd-analyze verify` accepts them, and they say what the
daemon relies on (notify, watchdog, reload by SIGHUP) and how the system unit is sandboxed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "systemd"
# verify checks that ExecStart's program exists, so the copies run this environment's kbd
KBD_SCRIPT = Path(sys.executable).parent / "kbd"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it)")


def with_exec_start(name: str, folder: Path, program: Path = KBD_SCRIPT) -> Path:
    """A copy of the unit in `folder`, its ExecStart running `program`."""
    text, count = re.subn(r"^ExecStart=\S+", f"ExecStart={program}", (UNITS / name).read_text(),
                          flags=re.MULTILINE)
    assert count == 1
    unit = folder / name
    unit.write_text(text)
    return unit


def verify(unit: Path, user: bool, runtime_dir: Path) -> tuple[int, list[str]]:
    """Exit status and the lines about this unit (verify warns but exits 0 on an unknown or
    misspelt directive, so the lines are what catch those)."""
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env |= {"SYSTEMD_LOG_COLOR": "0", "XDG_RUNTIME_DIR": str(runtime_dir)}  # --user needs it
    done = subprocess.run(["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in lines if unit.name in line]


@needs_analyze
@pytest.mark.parametrize("name, user", [("kbd.service", True), ("kbd-system.service", False),
                                        ("kbd-ingest.service", False),
                                        ("kbd-model.service", False)])
def test_unit_verifies(tmp_path, name, user):
    assert KBD_SCRIPT.exists(), f"{KBD_SCRIPT} missing: pip install -e . in this environment"
    code, problems = verify(with_exec_start(name, tmp_path), user, tmp_path / "run")
    assert code == 0 and problems == []


@needs_analyze
def test_verify_catches_mistakes(tmp_path):
    """So that test_unit_verifies can fail: a misspelt directive, a missing program."""
    unit = with_exec_start("kbd-system.service", tmp_path)
    unit.write_text(unit.read_text().replace("\nRestart=", "\nRestrat="))
    code, problems = verify(unit, False, tmp_path / "run")
    assert any("Unknown key" in line and "Restrat" in line for line in problems), problems
    missing = with_exec_start("kbd.service", tmp_path, tmp_path / "no-such-kbd")
    code, problems = verify(missing, True, tmp_path / "run")
    assert code != 0 and any("no-such-kbd" in line for line in problems), problems


def settings(name: str) -> dict[str, list[str]]:
    """'Section.Key' -> values, in order (Environment= and friends repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(f"{section}.{key}", []).append(value)
    return found


COMMON = {
    "Service.Type": ["notify"], "Service.NotifyAccess": ["main"],
    "Service.ExecReload": ["/bin/kill -HUP $MAINPID"], "Service.Restart": ["on-failure"],
    "Service.WatchdogSec": ["60"],
}


def test_user_unit_settings():
    found = settings("kbd.service")
    assert {k: found.get(k) for k in COMMON} == COMMON
    assert found["Service.ExecStart"] == ["%h/.local/bin/kbd daemon"]
    assert found["Install.WantedBy"] == ["default.target"]


def test_system_unit_is_hardened():
    found = settings("kbd-system.service")
    assert {k: found.get(k) for k in COMMON} == COMMON
    expected = {
        "User": "kbd", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "read-only", "ReadWritePaths": "/var/lib/kbd", "StateDirectory": "kbd",
        "RuntimeDirectory": "kbd", "PrivateTmp": "yes", "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        # nothing kbd stores is readable by other users (issue 20, item 2)
        "UMask": "0077", "StateDirectoryMode": "0700", "RuntimeDirectoryMode": "0700",
    }
    assert {k: found.get(f"Service.{k}") for k in expected} == {
        k: [v] for k, v in expected.items()}
    assert "KBD_HOME=/var/lib/kbd" in found["Service.Environment"]
    # PyTorch JIT needs writable+executable memory; CUDA needs /dev/nvidia*, which any device
    # rule would close (ProtectClock= implies DeviceAllow=char-rtc r)
    assert "Service.MemoryDenyWriteExecute" not in found
    assert found.get("Service.PrivateDevices", ["no"]) == ["no"]
    assert "Service.DeviceAllow" not in found and "Service.ProtectClock" not in found


FLEET_SANDBOX = {
    "User": "kbd", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
    "ProtectHome": "read-only", "ReadWritePaths": "/var/lib/kbd", "PrivateTmp": "yes",
    "UMask": "0077", "StateDirectoryMode": "0700", "Restart": "on-failure",
    "CapabilityBoundingSet": "", "EnvironmentFile": "-/etc/kbd/pg.env",
}


@pytest.mark.parametrize("name", ["kbd-ingest.service", "kbd-model.service"])
def test_fleet_units_are_hardened_and_hold_no_secret(name):
    """A fleet node's unit (docs/fleet.md, Deployment): sandboxed as the system unit, its
    PostgreSQL login from credentials systemd hands the service, never a password inline."""
    found = settings(name)
    assert {k: found.get(k) for k in COMMON} == COMMON
    assert {k: found.get(f"Service.{k}") for k in FLEET_SANDBOX} == {
        k: [v] for k, v in FLEET_SANDBOX.items()}
    assert "network-online.target" in found["Unit.After"][0].split()
    assert sorted(v.split(":")[0] for v in found["Service.LoadCredential"]) == [
        "ca.crt", "client.crt", "client.key"]
    assert set(" ".join(found["Service.Environment"]).split()) >= {
        "PGSSLROOTCERT=%d/ca.crt", "PGSSLCERT=%d/client.crt", "PGSSLKEY=%d/client.key"}
    text = (UNITS / name).read_text()
    assert "sslmode=verify-full" in text  # the URL the header tells to write
    assert not re.search(r"postgresql\S*://[^@\s/]*:[^@\s/]*@", text)  # user:password@
    assert "Service.MemoryDenyWriteExecute" not in found  # PyTorch's JIT (see the comments)


def test_the_ingest_unit_has_no_devices_and_the_model_unit_keeps_the_gpu():
    ingest, model = settings("kbd-ingest.service"), settings("kbd-model.service")
    assert ingest["Service.PrivateDevices"] == ["yes"]
    assert ingest["Service.SupplementaryGroups"] == ["adm"]  # /var/log
    assert ingest["Service.SystemCallFilter"] == ["@system-service"]
    assert "# ReadOnlyPaths=/var/log/myapp /srv/reports" in (
        UNITS / "kbd-ingest.service").read_text().splitlines()
    # CUDA needs /dev/nvidia*: any device rule would close it
    assert model.get("Service.PrivateDevices", ["no"]) == ["no"]
    assert "Service.DeviceAllow" not in model and "Service.ProtectClock" not in model
    assert "nvidia-persistenced.service" in model["Unit.After"][0].split()
    assert model["Unit.Wants"] == ["network-online.target", "nvidia-persistenced.service"]
    assert model["Service.TimeoutStartSec"] == ["600"]  # a 7B model loads in minutes
