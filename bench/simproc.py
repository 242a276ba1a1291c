"""The simulator in its own process, so it does not share a GIL with the tick being measured."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from worker.luxor.simulator import SimulatorConfig, _urls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SimulatorProcess:
    """`with SimulatorProcess(config) as sim:` runs `luxor-etl simulate` on a free port."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        # Never the default 8099: a demo may be serving there.
        self.port = free_port()
        self.api_key = config.api_key
        self.base_url, self.control_url = _urls(config.host, self.port)
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> SimulatorProcess:
        cfg = self.config
        command = [
            sys.executable,
            "-m",
            "worker.cli",
            "simulate",
            f"--subaccounts={cfg.subaccounts}",
            f"--workers={cfg.workers}",
            f"--seed={cfg.seed}",
            f"--latency-ms={cfg.latency_ms}",
            f"--max-page-size={cfg.max_page_size}",
            f"--drift-interval={cfg.drift_interval_s}",
            f"--host={cfg.host}",
            f"--port={self.port}",
            f"--api-key={cfg.api_key}",
        ]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while True:
            try:
                httpx.get(f"{self.control_url}/stats", timeout=2).raise_for_status()
                return self
            except httpx.HTTPError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("the simulator process did not start") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def drift(self) -> None:
        """New hashrates and a few status flips, so every tick stores fresh values."""
        httpx.post(f"{self.control_url}/drift", timeout=60).raise_for_status()
