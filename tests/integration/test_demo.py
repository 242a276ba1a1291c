"""`luxor-etl demo` on a bare machine: embedded fallbacks, the fleet shown within a tick."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

from tests.integration.conftest import free_port


def test_demo_falls_back_shows_the_fleet_and_stops_cleanly(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "METRICS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "demo",
            "--interval",
            "5",
            "--subaccounts",
            "2",
            "--workers",
            "30",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = ""
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "site-01 " not in output:
            if selector.select(timeout=1):
                line = process.stdout.readline()
                if not line:
                    break
                output += line
        assert "PostgreSQL does not answer" in output and "sqlite:///" in output
        assert "Redis does not answer" in output and "embedded" in output
        assert "across 2 subaccounts" in output, output[-3000:]
        assert "site-00" in output and "site-01" in output
        assert (tmp_path / "demo-data" / "luxor.db").exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert process.returncode in (0, 130), output[-2000:]
    leftovers = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True)
    assert leftovers.stdout == b"", "demo left processes behind"
