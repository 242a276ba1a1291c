"""`make chaos`: a soak run of ticks against the simulator with faults, outages and a crash.

The driver runs ticks in a separate process (the system under test) with synthetic tick
times one interval apart, so hundreds of ticks take minutes. PostgreSQL and Redis are reached
through TCP proxies the driver can cut (an outage, a restart). Midway it kills the tick
process with SIGKILL during a tick and starts it again from that tick. At the end it checks
every stored row and cache value against the simulator's fleet and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

BASE = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL_S = 60
DATABASE_URL = os.environ.get(
    "CHAOS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/luxor_etl_chaos"
)
REDIS_URL = os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/13")
PREFIX = "chaos"


class PageRecorder:
    """A webhook receiver on loopback that keeps every alert it is sent."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        pages = self.pages = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                pages.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def duplicates(self) -> int:
        """Pages sent more than once for the same episode, status and tick."""
        seen: dict[tuple, int] = {}
        for page in self.pages:
            key = (page.get("dedup_key"), page.get("status"), page.get("observed_at"))
            seen[key] = seen.get(key, 0) + 1
        return sum(count - 1 for count in seen.values())


class CuttableProxy:
    """A loopback TCP proxy whose link can be cut: open connections drop, new ones are refused."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        def close_all() -> None:
            self._up = False
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_up", True)


def observed(tick: int) -> datetime:
    return BASE + timedelta(seconds=INTERVAL_S * tick)


def run_ticks(first: int, last: int, progress: Path) -> None:
    """The system under test: ticks first..last, one JSON line each (in its own process)."""
    from models.store import make_engine
    from tasks.tick import SKIPPED_BUSY, run_tick_locked
    from worker.logs import setup_logging
    from worker.settings import load_settings

    settings = load_settings()
    setup_logging(settings.secrets(), level="WARNING")
    engine = make_engine(settings.database_url, statement_timeout_s=5)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=2)
    with progress.open("a") as out:
        for tick in range(first, last + 1):
            out.write(json.dumps({"start": tick}) + "\n")
            out.flush()
            report = run_tick_locked(
                settings, engine=engine, redis_client=client, now=observed(tick)
            )
            while report.skipped == SKIPPED_BUSY:
                # As the Celery task does: a crashed holder's lock lapses, then retry.
                time.sleep(1)
                report = run_tick_locked(
                    settings, engine=engine, redis_client=client, now=observed(tick)
                )
            line = {
                "tick": tick,
                "exit": report.exit_code,
                "ok": [s.subaccount for f in report.fleets for s in f.snapshots],
                "failed": [f"{f.subaccount}: {f.reason}" for f in report.failures],
                "parked": report.parked,
                "store_error": report.store_error,
                "cache_error": bool(report.cache_error),
                "skipped": report.skipped,
            }
            out.write(json.dumps(line) + "\n")
            out.flush()


def fleet_truth(control_url: str) -> dict[str, list[tuple[str, str]]]:
    state = httpx.get(f"{control_url}/state", timeout=10).json()
    return {s["name"]: s for s in state["subaccounts"]}  # type: ignore[return-value]


def workers_truth(sim: Any) -> dict[str, frozenset[tuple[str, str]]]:
    return {
        name: frozenset((w["name"], w["status"]) for w in sim.fleet.workers(name))
        for name in sim.fleet.subaccount_names()
    }


def reset_stores() -> None:
    from models.store import create_database_if_missing, make_engine, upgrade_schema

    create_database_if_missing(DATABASE_URL)
    engine = make_engine(DATABASE_URL)
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE subaccount_ticks, alerts"))
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


@contextlib.contextmanager
def tick_process(env: dict[str, str], first: int, last: int, progress: Path) -> Iterator[Any]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--run-ticks",
            str(first),
            str(last),
            "--progress",
            str(progress),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def progress_lines(progress: Path) -> list[dict[str, Any]]:
    if not progress.exists():
        return []
    return [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]


def last_started(progress: Path) -> int:
    starts = [line["start"] for line in progress_lines(progress) if "start" in line]
    return max(starts, default=-1)


def drive(ticks: int, fault_rate: float) -> dict[str, Any]:
    from worker.luxor.simulator import RunningSimulator, SimulatorConfig

    reset_stores()
    work = Path("bench/out")
    work.mkdir(parents=True, exist_ok=True)
    progress = work / "chaos-progress.jsonl"
    progress.unlink(missing_ok=True)
    receiver = PageRecorder()
    pg = CuttableProxy("127.0.0.1", 5432)
    rd = CuttableProxy("127.0.0.1", 6379)
    database_via_proxy = DATABASE_URL.replace("127.0.0.1:5432", f"127.0.0.1:{pg.port}")
    redis_via_proxy = REDIS_URL.replace("127.0.0.1:6379", f"127.0.0.1:{rd.port}")
    config = SimulatorConfig(
        subaccounts=5,
        workers=150,
        port=0,
        seed=11,
        drift_interval_s=0.0,
        faults=str(fault_rate),
    )
    outage = range(ticks * 3 // 10, ticks * 3 // 10 + max(3, ticks // 12))
    redis_restart_at = ticks * 3 // 4
    kill_at = ticks * 6 // 10
    half = ticks // 2
    truths: dict[int, dict[str, frozenset[tuple[str, str]]]] = {}
    started = time.monotonic()
    with RunningSimulator(config) as sim:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LUXOR_", "ALERT"))},
            "LUXOR_BASE_URL": sim.base_url,
            "LUXOR_API_KEY": sim.api_key,
            "DATABASE_URL": database_via_proxy,
            "REDIS_URL": redis_via_proxy,
            "CACHE_PREFIX": PREFIX,
            "POLL_INTERVAL_SECONDS": str(INTERVAL_S),
            "LUXOR_TIMEOUT_SECONDS": "1.5",
            "LUXOR_MAX_ATTEMPTS": "6",
            "ALERT_WEBHOOK_URL": receiver.url,
        }
        phases = [(0, half - 1), (half, ticks - 1)]
        for number, (first, last) in enumerate(phases):
            if number == 1:
                # Between phases, 30 machines of one site go dark (a real drop to report).
                httpx.post(
                    f"{sim.control_url}/workers/down", json={"subaccount": "site-01", "count": 30}
                ).raise_for_status()
            truth = workers_truth(sim)
            for tick in range(first, last + 1):
                truths[tick] = truth
            next_tick, killed = first, False
            while next_tick <= last:
                with tick_process(env, next_tick, last, progress) as process:
                    while process.poll() is None:
                        current = last_started(progress)
                        if current in outage:
                            pg.cut()
                        else:
                            pg.restore()
                        if current == redis_restart_at:
                            rd.cut()
                            time.sleep(0.3)
                            rd.restore()
                        if number == 1 and not killed and current == kill_at:
                            time.sleep(0.15)
                            os.killpg(process.pid, signal.SIGKILL)
                            process.wait()
                            killed = True
                            break
                        time.sleep(0.05)
                done = [line["tick"] for line in progress_lines(progress) if "tick" in line]
                next_tick = max([t for t in done if first <= t <= last], default=first - 1) + 1
        pg.restore()
        # One more clean tick after recovery writes whatever was parked.
        with tick_process(env, ticks, ticks, progress) as process:
            process.wait()
        truths[ticks] = workers_truth(sim)
        stats = httpx.get(f"{sim.control_url}/stats", timeout=10).json()
    elapsed = time.monotonic() - started
    result = verify(ticks + 1, truths, progress_lines(progress), stats, elapsed, fault_rate)
    firing = [p for p in receiver.pages if p.get("status") == "firing"]
    result["alert pages received (firing/resolved)"] = (
        f"{len(firing)}/{len(receiver.pages) - len(firing)}"
    )
    result["pages duplicated"] = receiver.duplicates()
    return result


def verify(
    ticks: int,
    truths: dict[int, dict[str, frozenset[tuple[str, str]]]],
    lines: list[dict[str, Any]],
    stats: dict[str, Any],
    elapsed_s: float,
    fault_rate: float,
) -> dict[str, Any]:
    from worker import cache

    engine = sa.create_engine(DATABASE_URL)
    by_tick = {observed(t): t for t in truths}
    partial = wrong = 0
    stored_keys: set[tuple[int, str]] = set()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT observed_at, subaccount, active, inactive, worker_names, worker_active "
                "FROM subaccount_ticks"
            )
        )
        for observed_at, subaccount, active, inactive, names, flags in rows:
            tick = by_tick[observed_at]
            stored_keys.add((tick, subaccount))
            workers = frozenset(
                (n, "ACTIVE" if a else "INACTIVE") for n, a in zip(names, flags, strict=True)
            )
            if len(names) != active + inactive or sum(flags) != active:
                partial += 1
            elif workers != truths[tick][subaccount]:
                wrong += 1
        duplicates = conn.scalar(
            sa.text(
                "SELECT count(*) FROM (SELECT 1 FROM worker_snapshots "
                "GROUP BY observed_at, subaccount, worker_name HAVING count(*) > 1) d"
            )
        )
    engine.dispose()

    ok_reported = {(line["tick"], name) for line in lines if "tick" in line for name in line["ok"]}
    lost = len(ok_reported - stored_keys)

    client = redis.Redis.from_url(REDIS_URL)
    keys = cache.CacheKeys(PREFIX)
    false_cache = 0
    for name in truths[ticks - 1]:
        entry = cache.read_subaccount(client, keys, "BTC", name)
        if entry is None:
            continue
        tick = by_tick[
            datetime.strptime(entry["observed_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        ]
        seen = frozenset((w["name"], w["status"]) for w in entry["workers"])
        if seen != truths[tick][name] or entry["active"] + entry["inactive"] != len(seen):
            false_cache += 1
    summary = cache.read_summary(client, keys, "BTC") or {}
    listing = cache.read_subaccounts(client, keys, "BTC") or []
    if summary and summary.get("active") != sum(e["active"] for e in listing):
        false_cache += 1

    subaccount_ticks = ticks * len(truths[0])
    faults = sum(stats.get("faults_injected", {}).values())
    return {
        "ticks": ticks,
        "fault rate asked": f"{fault_rate:.0%}",
        "API requests": stats.get("requests_total", 0),
        "faults injected": faults,
        "subaccount-ticks stored": len(stored_keys),
        "subaccount-ticks recovered by retries": (
            f"{len(ok_reported)}/{subaccount_ticks} ({len(ok_reported) / subaccount_ticks:.1%})"
        ),
        "ticks parked during the PostgreSQL outage": sum(1 for line in lines if line.get("parked")),
        "partial ticks": partial,
        "rows differing from the API": wrong,
        "duplicate rows": duplicates,
        "false cache values": false_cache,
        "snapshots lost after recovery": lost,
        "worker crashes (SIGKILL mid-tick)": 1,
        "wall time": f"{elapsed_s:.0f} s",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--run-ticks", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_ticks:
        run_ticks(args.run_ticks[0], args.run_ticks[1], args.progress)
        return
    result = drive(args.ticks, args.fault_rate)
    Path("bench/out/chaos.json").write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  -----")
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value}")
    failed = [
        k
        for k in (
            "partial ticks",
            "rows differing from the API",
            "duplicate rows",
            "false cache values",
            "snapshots lost after recovery",
            "pages duplicated",
        )
        if result[k]
    ]
    if failed:
        raise SystemExit(f"chaos: not clean: {', '.join(failed)}")


if __name__ == "__main__":
    main()
