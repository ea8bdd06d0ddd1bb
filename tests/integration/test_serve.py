"""`voiceagent serve` as a real process: start, serve, SIGTERM, and refusing to half-start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve_process import ServeProcess
from voiceagent.store import Database

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
    env["VOICEAGENT_ENGINES__PRELOAD"] = "false"  # one test below loads the real models
    env.update(extra)
    return env


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    servers: list[ServeProcess] = []

    def start(*args: str, **env: str) -> ServeProcess:
        servers.append(ServeProcess(tmp_path, *args, **{"VOICEAGENT_ENGINES__PRELOAD": "false", **env}))
        return servers[-1]

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voiceagent", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(**env),
        timeout=60,
    )


def test_serves_health_and_stops_gracefully_on_sigterm(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(VOICEAGENT_STORE__URL=f"sqlite+aiosqlite:///{tmp_path}/va.db")
    base = server.wait_listening()
    assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{base}/readyz").status_code == 200

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert "received SIGTERM" in server.log and "shutdown complete" in server.log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz")


def test_serves_on_the_real_postgresql(start_server, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server(VOICEAGENT_STORE__URL=postgres_url)
    base = server.wait_listening()
    store = httpx.get(f"{base}/readyz").json()["checks"]["store"]
    assert store["ok"] and store["detail"].startswith("postgresql ")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_postgresql_fails_in_one_line_and_listens_nowhere(tmp_path: Path) -> None:
    port = _closed_port()
    result = run_cli(
        "serve",
        "--port",
        "0",
        cwd=tmp_path,
        VOICEAGENT_STORE__URL=f"postgresql+asyncpg://va:secret@127.0.0.1:{port}/va",
        VOICEAGENT_STORE__CONNECT_TIMEOUT_S="2",
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(
        f"voiceagent: error: cannot reach database postgresql+asyncpg://va:***@127.0.0.1:{port}/va"
    )
    assert "secret" not in result.stderr
    assert "listening on" not in result.stderr


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"voiceagent: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert not (tmp_path / ".data").exists()  # the store was never opened


def test_bad_config_exits_non_zero_naming_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 99999\n")
    result = run_cli("serve", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"voiceagent: error: invalid configuration: {bad}: server.port:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".data").exists()


def test_help_lists_every_subcommand_and_each_runs(tmp_path: Path) -> None:
    help_text = run_cli("--help", cwd=tmp_path).stdout
    for command in ("serve", "config", "db"):
        assert re.search(rf"^\s+{command}\s", help_text, re.MULTILINE), help_text

    db_url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    shown = run_cli("config", "show", cwd=tmp_path, VOICEAGENT_SERVER__PORT="8123")
    assert shown.returncode == 0 and "port: 8123" in shown.stdout
    assert run_cli("config", "check", cwd=tmp_path).stdout.startswith("configuration ok")

    assert run_cli("db", "current", cwd=tmp_path, VOICEAGENT_STORE__URL=db_url).stdout.startswith("base")
    upgraded = run_cli("db", "upgrade", cwd=tmp_path, VOICEAGENT_STORE__URL=db_url)
    head = Database.head_revision()  # the newest migration, whichever this version ships
    assert upgraded.returncode == 0 and upgraded.stdout.strip() == f"database at {head}"
    assert run_cli("db", "current", cwd=tmp_path, VOICEAGENT_STORE__URL=db_url).stdout.startswith(str(head))
    down = run_cli("db", "downgrade", "base", cwd=tmp_path, VOICEAGENT_STORE__URL=db_url)
    assert down.returncode == 0 and down.stdout.strip() == "database at base"
    assert run_cli("--version", cwd=tmp_path).stdout.startswith("voiceagent ")


def test_a_node_with_migrations_off_refuses_an_old_schema(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--port",
        "0",
        cwd=tmp_path,
        VOICEAGENT_STORE__URL=f"sqlite+aiosqlite:///{tmp_path}/old.db",
        VOICEAGENT_STORE__MIGRATE_ON_START="false",
    )
    assert result.returncode == 1
    needs = f"database schema is at nothing, this version needs {Database.head_revision()}"
    assert needs in result.stderr


def test_a_node_on_the_real_broker_reports_it_ready(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import require_service

    endpoint = require_service("RocketMQ", "VA_TEST_ROCKETMQ_ENDPOINT")
    server = start_server(
        VOICEAGENT_STORE__URL=f"sqlite+aiosqlite:///{tmp_path}/va.db",
        VOICEAGENT_EVENTS__BACKEND="rocketmq",
        VOICEAGENT_EVENTS__ROCKETMQ__ENDPOINTS=endpoint,
    )
    base = server.wait_listening()
    events = httpx.get(f"{base}/readyz").json()["checks"]["events"]
    assert events["ok"] and events["detail"] == f"proxy {endpoint} accepts connections"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0


@pytest.mark.models
def test_a_default_node_listens_at_once_and_is_ready_when_its_models_are(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """What `make run` does: every engine real (Silero, Whisper, Piper, e5, the local LLM server)."""
    server = start_server(
        VOICEAGENT_STORE__URL=f"sqlite+aiosqlite:///{tmp_path}/va.db", VOICEAGENT_ENGINES__PRELOAD="true"
    )
    base = server.wait_listening()
    assert httpx.get(f"{base}/healthz").status_code == 200
    # "At once" is checked by what it means, not by a stopwatch: the node answers while its models
    # are still loading (the local LLM server alone takes ~0.6 s to start). How soon it listens is
    # measured by bench (serve_startup_to_healthz_s).
    seen: list[str] = []
    deadline = time.monotonic() + 120  # a deadline for loading every model, not a latency bound
    while time.monotonic() < deadline:
        engines = httpx.get(f"{base}/readyz", timeout=10).json()["checks"]["engines"]
        seen.append(engines["detail"])
        if engines["ok"]:
            break
        assert engines["detail"] == "loading", engines  # not a failure
        time.sleep(0.5)
    assert engines["ok"], engines
    assert seen[0] == "loading", "the node only answered once its models were loaded"
    for name in ("vad", "asr", "tts", "embeddings", "llm"):
        assert f"{name} ready" in engines["detail"]
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert "shutdown complete" in server.log
