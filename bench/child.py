"""One measured piece of the benchmark, run in its own process; prints one JSON line.

Each mode gets a fresh process so its peak RSS (VmHWM) is its own. Connections are opened
before the clock starts, as in a long-running Celery worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from models.store import TICK_COLUMNS, make_engine, write_subaccount_ticks


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def drift(control_url: str) -> None:
    httpx.post(f"{control_url}/drift", timeout=60).raise_for_status()


def mode_tick(args: argparse.Namespace) -> dict[str, Any]:
    """The project's tick (`run_tick`), `--ticks` times, one poll interval apart."""
    from tasks.tick import run_tick
    from worker.settings import load_settings

    settings = load_settings(
        luxor_api_key=args.api_key,
        luxor_base_url=args.base_url,
        database_url=args.db_url,
        redis_url=args.redis_url,
        cache_prefix=args.prefix,
        luxor_concurrency=args.concurrency,
        luxor_timeout_seconds=30,
        poll_interval_seconds=60,
    )
    engine = make_engine(args.db_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    base_rss = rss_mb("VmRSS")
    start = datetime.fromisoformat(args.observed_at)
    ticks = []
    for n in range(args.ticks):
        if args.control_url:
            drift(args.control_url)
        c0, t0 = cpu_s(), time.perf_counter()
        report = run_tick(
            settings, engine=engine, redis_client=client, now=start + timedelta(minutes=n)
        )
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        assert report.exit_code == 0, (report.store_error, report.cache_error, report.failures)
        workers = sum(s.active + s.inactive for f in report.fleets for s in f.snapshots)
        ticks.append(
            {"wall_s": wall, "cpu_s": cpu, "rows": report.rows_written, "workers": workers}
        )
    return {"ticks": ticks, "rss_peak_mb": rss_mb(), "rss_base_mb": base_rss}


def mode_naive(args: argparse.Namespace) -> dict[str, Any]:
    from bench.naive import create_tables, naive_tick

    engine = make_engine(args.db_url)
    create_tables(engine)
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    if args.control_url:
        drift(args.control_url)
    c0, t0 = cpu_s(), time.perf_counter()
    stored = naive_tick(
        args.base_url,
        args.api_key,
        engine,
        client,
        f"{args.prefix}-naive",
        datetime.fromisoformat(args.observed_at),
    )
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    return {"wall_s": wall, "cpu_s": cpu, "workers": stored, "rss_peak_mb": rss_mb()}


async def _fetch_only(base_url: str, api_key: str, concurrency: int) -> tuple[int, int]:
    """Every request of a tick, bodies read and nothing decoded (the HTTP floor)."""
    from worker.luxor.client import default_transport

    headers = {"authorization": api_key}
    async with httpx.AsyncClient(
        headers=headers, transport=default_transport(concurrency), timeout=30
    ) as http:

        async def pages(url: str, params: dict | None) -> list[bytes]:
            bodies = []
            while True:
                response = await http.get(url, params=params)
                body = await response.aread()
                bodies.append(body)
                next_url = _next_page_url(body)
                if not next_url:
                    return bodies
                url, params = str(httpx.URL(url, params=params).join(next_url)), None

        listing = await pages(f"{base_url}/pool/subaccounts", {"page_size": 1000})
        names = [s["name"] for body in listing for s in json.loads(body)["subaccounts"]]
        semaphore = asyncio.Semaphore(concurrency)

        async def one(name: str) -> int:
            async with semaphore:
                bodies = await pages(
                    f"{base_url}/pool/workers/BTC", {"subaccount_names": name, "page_size": 1000}
                )
                return sum(len(b) for b in bodies)

        sizes = await asyncio.gather(*(one(n) for n in names))
        return len(names), sum(sizes)


def _next_page_url(body: bytes) -> str | None:
    at = body.rfind(b'"next_page_url":')
    if at < 0 or body.startswith(b"null", at + 16):
        return None
    return body[at + 17 : body.index(b'"', at + 17)].decode()


def mode_fetch(args: argparse.Namespace) -> dict[str, Any]:
    base_url, api_key, control_url = args.base_url, args.api_key, args.control_url
    sim = None
    if args.inproc_sim:
        from worker.luxor.simulator import RunningSimulator, SimulatorConfig

        subaccounts, workers = (int(x) for x in args.inproc_sim.split("x"))
        sim = RunningSimulator(
            SimulatorConfig(
                port=0,
                subaccounts=subaccounts,
                workers=workers,
                latency_ms=args.latency_ms,
                drift_interval_s=0,
            )
        ).__enter__()
        base_url, api_key, control_url = sim.base_url, sim.api_key, sim.control_url
    runs = []
    try:
        for _ in range(args.repeat):
            if control_url:
                drift(control_url)
            c0, t0 = cpu_s(), time.perf_counter()
            subaccounts, body_bytes = asyncio.run(_fetch_only(base_url, api_key, args.concurrency))
            runs.append({"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0})
    finally:
        if sim is not None:
            sim.__exit__(None, None, None)
    return {"runs": runs, "subaccounts": subaccounts, "bytes": body_bytes, "rss_peak_mb": rss_mb()}


def mode_copy(args: argparse.Namespace) -> dict[str, Any]:
    """One stored tick's rows three ways: raw COPY with psycopg's own dumpers, raw COPY of
    the same rows through the project's array encoder (both into a plain table of the same
    layout: no partition routing, no DELETE, no locks), and the project's write path
    (`write_subaccount_ticks` on `tick_rows` dicts, in the tick's chunks)."""
    import psycopg

    from models.store import _COPY_TYPES, _WIRE_TYPES, copy_row
    from tasks.writer import CHUNK_WORKERS

    engine = make_engine(args.db_url)
    at = datetime.fromisoformat(args.observed_at)
    select = f"SELECT {', '.join(TICK_COLUMNS)} FROM subaccount_ticks WHERE observed_at = :at"
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(select), {"at": at})]
    samples = sum(len(r["worker_names"]) for r in rows)
    tuples = [tuple(r[c] for c in TICK_COLUMNS) for r in rows]
    copy_sql = f"COPY bench_floor_ticks ({', '.join(TICK_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    dsn = args.db_url.replace("postgresql+psycopg://", "postgresql://")
    raw_runs: list[dict[str, float]] = []
    encoded_runs: list[dict[str, float]] = []
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor_ticks (LIKE subaccount_ticks INCLUDING ALL) "
            "WITH (toast_tuple_target = 128)"
        )
        conn.commit()
        for _ in range(args.repeat):
            for runs, types, convert in (
                (raw_runs, [_COPY_TYPES[c] for c in TICK_COLUMNS], None),
                (encoded_runs, _WIRE_TYPES, copy_row),
            ):
                conn.execute("TRUNCATE bench_floor_ticks")
                conn.commit()
                c0, t0 = cpu_s(), time.perf_counter()
                with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    copy.set_types(types)
                    if convert is None:
                        for row in tuples:
                            copy.write_row(row)
                    else:
                        for row in rows:
                            copy.write_row(convert(row))
                conn.commit()
                runs.append({"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0})
        conn.execute("DROP TABLE bench_floor_ticks")
        conn.commit()
    # Far from the ticks' day; each run inserts afresh, as the raw COPYs do.
    target = at + timedelta(days=3)
    clear = sa.text("DELETE FROM subaccount_ticks WHERE observed_at = :t")
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        if size >= CHUNK_WORKERS:
            chunks.append([])
            size = 0
        chunks[-1].append(row | {"observed_at": target})
        size += len(row["worker_names"])
    write_subaccount_ticks(engine, chunks[0][:1])  # the partition exists before timing
    project_runs = []
    for _ in range(args.repeat):
        with engine.begin() as conn:
            conn.execute(clear, {"t": target})
        c0, t0 = cpu_s(), time.perf_counter()
        for batch in chunks:
            write_subaccount_ticks(engine, batch)
        project_runs.append({"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0})
    with engine.begin() as conn:
        conn.execute(clear, {"t": target})
    return {
        "rows": len(rows),
        "samples": samples,
        "raw": raw_runs,
        "raw_encoded": encoded_runs,
        "project": project_runs,
        "rss_peak_mb": rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["tick", "naive", "fetch", "copy"])
    parser.add_argument("--base-url", default="")
    parser.add_argument("--control-url", default="")
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--observed-at", default=datetime(2026, 12, 3, tzinfo=UTC).isoformat())
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ticks", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--inproc-sim", default="")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    result = {
        "tick": mode_tick,
        "naive": mode_naive,
        "fetch": mode_fetch,
        "copy": mode_copy,
    }[args.mode](args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
