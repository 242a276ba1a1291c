"""`make bench`: the project's tick beside a naive tick and beside the floor, in one run.

The simulator runs in its own process (bench/simproc.py); every measured piece runs in a
fresh child process (bench/child.py) so its CPU time and peak RSS are its own. Results go to
bench/results.json (and bench/results.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from bench.simproc import SimulatorProcess
from models.store import make_engine, upgrade_schema
from worker.luxor.simulator import SimulatorConfig

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/luxor_etl_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
PREFIX = "bench"
WORKERS_PER_SUBACCOUNT = 100
# One partition (day) per fleet size, far from any real tick, so storage is measured per size.
DAYS = {10_000: "2030-01-01", 100_000: "2030-01-02", 1_000_000: "2030-01-03"}
TARGETS = {
    "tick_s": 2.0,
    "vs_floor": 1.5,
    "vs_naive": 12.0,
    "ingest_share": 0.70,
    "summary_p99_ms": 1.0,
    "rss_100k_mb": 300.0,
    "rss_1m_mb": 600.0,
    "bytes_per_sample": 40.0,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child(mode: str, sim: SimulatorProcess | None, *args: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.child",
        mode,
        "--db-url",
        DATABASE_URL,
        "--redis-url",
        REDIS_URL,
        "--prefix",
        PREFIX,
        *args,
    ]
    if sim is not None:
        command += ["--base-url", sim.base_url, "--control-url", sim.control_url]
        command += ["--api-key", sim.api_key]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.child {mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_database() -> None:
    url = sa.engine.make_url(DATABASE_URL)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    engine = make_engine(DATABASE_URL)
    upgrade_schema(engine)
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return (
        ordered[len(ordered) // 2],
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    )


def measure_size(workers: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    subaccounts = workers // WORKERS_PER_SUBACCOUNT
    label = f"{workers // 1000}k" if workers < 1_000_000 else "1M"
    config = SimulatorConfig(
        subaccounts=subaccounts,
        workers=WORKERS_PER_SUBACCOUNT,
        latency_ms=args.latency_ms,
        max_page_size=args.page_cap,
        drift_interval_s=0,
    )
    ticks = {10_000: 5, 100_000: 6, 1_000_000: 2}[workers]
    start = f"{DAYS[workers]}T00:00:00+00:00"
    entry: dict[str, Any] = {"workers": workers, "subaccounts": subaccounts}
    log(f"{label}: starting the simulator ({subaccounts} x {WORKERS_PER_SUBACCOUNT})")
    with SimulatorProcess(config) as sim:
        log(f"{label}: project tick x{ticks}")
        tick = child(
            "tick",
            sim,
            "--ticks",
            str(ticks),
            "--concurrency",
            str(args.concurrency),
            "--observed-at",
            start,
        )
        warm = tick["ticks"][1:]
        entry["tick"] = {
            "wall_s": median(warm, "wall_s"),
            "cpu_s": median(warm, "cpu_s"),
            "cold_wall_s": tick["ticks"][0]["wall_s"],
            "runs": tick["ticks"],
            "rss_peak_mb": tick["rss_peak_mb"],
            "rss_base_mb": tick["rss_base_mb"],
        }
        log(f"{label}: floor: fetch only")
        fetch = child("fetch", sim, "--repeat", "3", "--concurrency", str(args.concurrency))
        log(f"{label}: floor: raw COPY and the project's write path")
        copy = child("copy", None, "--repeat", "3", "--observed-at", start)
        raw_s = median(copy["raw"], "wall_s")
        encoded_s = median(copy["raw_encoded"], "wall_s")
        project_s = median(copy["project"], "wall_s")
        entry["floor"] = {
            "fetch_wall_s": median(fetch["runs"], "wall_s"),
            "fetch_cpu_s": median(fetch["runs"], "cpu_s"),
            "copy_wall_s": min(raw_s, encoded_s),
            "wall_s": median(fetch["runs"], "wall_s") + min(raw_s, encoded_s),
        }
        entry["ingest"] = {
            "rows": copy["rows"],
            "samples": copy["samples"],
            "raw_psycopg_s": raw_s,
            "raw_encoded_s": encoded_s,
            "project_s": project_s,
        }
        if workers <= 100_000 and not args.skip_naive:
            log(f"{label}: naive tick (sequential requests, ORM, one SET per key)")
            naive = child("naive", sim, "--observed-at", start)
            entry["naive"] = {"wall_s": naive["wall_s"], "cpu_s": naive["cpu_s"]}
        if workers == 100_000:
            entry["reads"] = dashboard_reads(sim)
            entry["concurrency"] = {}
            for n, concurrency in enumerate(args.sweep):
                log(f"{label}: project tick at LUXOR_CONCURRENCY={concurrency}")
                sweep = child(
                    "tick",
                    sim,
                    "--ticks",
                    "3",
                    "--concurrency",
                    str(concurrency),
                    "--observed-at",
                    f"{DAYS[workers]}T{12 + n:02d}:00:00+00:00",
                )
                entry["concurrency"][concurrency] = median(sweep["ticks"][1:], "wall_s")
            entry["concurrency"][args.concurrency] = entry["tick"]["wall_s"]
    if workers == 100_000 and not args.skip_inproc:
        log(f"{label}: fetch only with the simulator in the same process")
        inproc = child(
            "fetch",
            None,
            "--repeat",
            "3",
            "--concurrency",
            str(args.concurrency),
            "--inproc-sim",
            f"{subaccounts}x{WORKERS_PER_SUBACCOUNT}",
            "--latency-ms",
            str(args.latency_ms),
        )
        entry["fetch_inproc_sim_wall_s"] = median(inproc["runs"], "wall_s")
    entry["storage"] = storage(workers)
    results["sizes"][label] = entry


def dashboard_reads(sim: SimulatorProcess, n: int = 2000) -> dict[str, Any]:
    """What a dashboard does now (GET + JSON decode) vs what the seed did (a live call)."""
    client = redis.Redis.from_url(REDIS_URL)
    reads: dict[str, Any] = {}
    for name, key in (
        ("summary", f"{PREFIX}:v1:BTC:summary"),
        ("fleet_table", f"{PREFIX}:v1:BTC:subaccounts"),
    ):
        assert client.get(key) is not None, key
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            json.loads(client.get(key))
            samples.append((time.perf_counter() - t0) * 1000)
        p50, p99 = percentiles(samples)
        reads[name] = {"p50_ms": p50, "p99_ms": p99, "bytes": len(client.get(key))}
    samples = []
    with httpx.Client(headers={"authorization": sim.api_key}, timeout=30) as http:
        url = f"{sim.base_url}/pool/workers/BTC"
        for _ in range(200):
            t0 = time.perf_counter()
            http.get(url, params={"subaccount_names": "site-00", "page_size": 100}).json()
            samples.append((time.perf_counter() - t0) * 1000)
    p50, p99 = percentiles(samples)
    reads["live_api"] = {"p50_ms": p50, "p99_ms": p99}
    return reads


def storage(workers: int) -> dict[str, Any]:
    """Bytes on disk per worker-sample of one size's partition: heap, TOAST and indexes."""
    engine = make_engine(DATABASE_URL)
    partition = "subaccount_ticks_p" + DAYS[workers].replace("-", "")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"VACUUM ANALYZE {partition}"))
        samples, ticks = conn.execute(
            sa.text(
                f"SELECT sum(cardinality(worker_names)), count(DISTINCT observed_at) "
                f"FROM {partition}"
            )
        ).one()
        total, heap, indexes = conn.execute(
            sa.text(
                f"SELECT pg_total_relation_size('{partition}'), pg_relation_size('{partition}'), "
                f"pg_indexes_size('{partition}')"
            )
        ).one()
        naive = None
        if conn.scalar(sa.text("SELECT to_regclass('naive_worker_snapshots')")) is not None:
            conn.execute(sa.text("VACUUM ANALYZE naive_worker_snapshots"))
            rows, size = conn.execute(
                sa.text(
                    "SELECT count(*), pg_total_relation_size('naive_worker_snapshots') "
                    "FROM naive_worker_snapshots"
                )
            ).one()
            naive = size / rows if rows else None
    engine.dispose()
    return {
        "ticks": ticks,
        "samples": int(samples),
        "bytes_total": total,
        "bytes_per_sample": total / samples,
        "heap_per_sample": heap / samples,
        "toast_per_sample": (total - heap - indexes) / samples,
        "indexes_per_sample": indexes / samples,
        "naive_bytes_per_sample": naive,
    }


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    lines = [
        f"luxor-etl bench · {results['machine']} · simulator in its own process · "
        f"{results['latency_ms']:.0f} ms latency · page cap {results['page_cap']} · "
        f"LUXOR_CONCURRENCY={results['concurrency']}",
        "",
        "Tick: median of warm ticks (cold first tick in brackets); floor = fetch-only at the "
        "same concurrency + raw COPY of the same rows",
        "",
        "| fleet | tick wall | tick CPU | naive wall | naive CPU | floor (fetch + COPY) "
        "| naive / tick | tick / floor | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in sizes.items():
        t, f, n = s["tick"], s["floor"], s.get("naive")
        naive_wall = f"{n['wall_s']:.1f} s" if n else "not run"
        naive_cpu = f"{n['cpu_s']:.1f} s" if n else "-"
        speedup = f"{n['wall_s'] / t['wall_s']:.0f}x" if n else "-"
        lines.append(
            f"| {label} ({s['subaccounts']} x {WORKERS_PER_SUBACCOUNT}) "
            f"| {t['wall_s']:.2f} s [{t['cold_wall_s']:.2f}] | {t['cpu_s']:.2f} s "
            f"| {naive_wall} | {naive_cpu} "
            f"| {f['wall_s']:.2f} s ({f['fetch_wall_s']:.2f} + {f['copy_wall_s']:.2f}) "
            f"| {speedup} | {t['wall_s'] / f['wall_s']:.2f}x | {t['rss_peak_mb']:.0f} MB |"
        )
    lines += ["", "Ingest (one 100k-worker tick: 1,000 rows, 100,000 worker-samples)", ""]
    lines += ["| write path | wall | worker-samples/s | vs raw COPY |", "|---|---|---|---|"]
    ingest = sizes["100k"]["ingest"] if "100k" in sizes else next(iter(sizes.values()))["ingest"]
    raw_best = min(ingest["raw_psycopg_s"], ingest["raw_encoded_s"])
    for name, key in (
        ("raw psycopg COPY, psycopg's dumpers, plain table", "raw_psycopg_s"),
        ("raw COPY, pre-encoded arrays, plain table", "raw_encoded_s"),
        ("project: write_subaccount_ticks (partitions, DELETE+COPY, chunks)", "project_s"),
    ):
        lines.append(
            f"| {name} | {ingest[key] * 1000:.0f} ms | {ingest['samples'] / ingest[key]:,.0f} "
            f"| {raw_best / ingest[key]:.0%} of the faster raw COPY |"
        )
    if "100k" in sizes and "reads" in sizes["100k"]:
        reads = sizes["100k"]["reads"]
        lines += ["", "Dashboard reads at 100k (Redis GET + JSON decode; 2,000 each)", ""]
        lines += ["| read | p50 | p99 | size |", "|---|---|---|---|"]
        lines.append(
            f"| summary key | {reads['summary']['p50_ms']:.3f} ms "
            f"| {reads['summary']['p99_ms']:.3f} ms | {reads['summary']['bytes']:,} B |"
        )
        lines.append(
            f"| fleet table key (1,000 subaccounts) | {reads['fleet_table']['p50_ms']:.3f} ms "
            f"| {reads['fleet_table']['p99_ms']:.3f} ms | {reads['fleet_table']['bytes']:,} B |"
        )
        lines.append(
            f"| live API call through the simulator (one workers page, what the seed did) "
            f"| {reads['live_api']['p50_ms']:.1f} ms | {reads['live_api']['p99_ms']:.1f} ms | - |"
        )
    lines += ["", "Storage: bytes on disk per worker-sample (heap + TOAST + indexes)", ""]
    lines += [
        "| fleet | ticks | project | heap / TOAST / indexes | naive row per worker |",
        "|---|---|---|---|---|",
    ]
    for label, s in sizes.items():
        st = s["storage"]
        naive = st["naive_bytes_per_sample"]
        lines.append(
            f"| {label} | {st['ticks']} | {st['bytes_per_sample']:.1f} B "
            f"| {st['heap_per_sample']:.1f} / {st['toast_per_sample']:.1f} / "
            f"{st['indexes_per_sample']:.1f} | {f'{naive:.0f} B' if naive else '-'} |"
        )
    if "100k" in sizes and "concurrency" in sizes["100k"]:
        sweep = sizes["100k"]["concurrency"]
        lines += [
            "",
            "100k tick wall by LUXOR_CONCURRENCY: "
            + ", ".join(f"{c}: {sweep[c]:.2f} s" for c in sorted(sweep, key=int)),
        ]
    if "100k" in sizes and "fetch_inproc_sim_wall_s" in sizes["100k"]:
        s = sizes["100k"]
        lines.append(
            f"100k fetch-only with the simulator in the tick's process: "
            f"{s['fetch_inproc_sim_wall_s']:.2f} s, in its own process: "
            f"{s['floor']['fetch_wall_s']:.2f} s"
        )
    lines += ["", "Targets", ""]
    for text in targets(results):
        lines.append(f"- {text}")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    sizes = results["sizes"]
    out = []
    if "100k" in sizes:
        s = sizes["100k"]
        wall, floor = s["tick"]["wall_s"], s["floor"]["wall_s"]
        out.append(f"100k tick <= {TARGETS['tick_s']} s: {wall:.2f} s, {mark(wall <= 2.0)}")
        out.append(f"100k tick <= 1.5x floor: {wall / floor:.2f}x, {mark(wall / floor <= 1.5)}")
        if "naive" in s:
            ratio = s["naive"]["wall_s"] / wall
            out.append(f"100k tick >= 12x faster than naive: {ratio:.0f}x, {mark(ratio >= 12)}")
        ingest = s["ingest"]
        share = min(ingest["raw_psycopg_s"], ingest["raw_encoded_s"]) / ingest["project_s"]
        out.append(f"ingest >= 70% of raw COPY: {share:.0%}, {mark(share >= 0.7)}")
        if "reads" in s:
            p99 = s["reads"]["summary"]["p99_ms"]
            out.append(f"summary read p99 <= 1 ms: {p99:.3f} ms, {mark(p99 <= 1.0)}")
        rss = s["tick"]["rss_peak_mb"]
        out.append(f"peak RSS at 100k <= 300 MB: {rss:.0f} MB, {mark(rss <= 300)}")
        per = s["storage"]["bytes_per_sample"]
        out.append(f"<= 40 B per worker-sample: {per:.1f} B, {mark(per <= 40)}")
    if "1M" in sizes:
        rss = sizes["1M"]["tick"]["rss_peak_mb"]
        out.append(f"peak RSS at 1M <= 600 MB: {rss:.0f} MB, {mark(rss <= 600)}")
    return out


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = list(results["sizes"].values())
    workers = [s["workers"] for s in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(workers, [s["tick"]["wall_s"] for s in sizes], "o-", label="tick")
    left.plot(workers, [s["floor"]["wall_s"] for s in sizes], "s--", label="floor")
    naive = [(s["workers"], s["naive"]["wall_s"]) for s in sizes if "naive" in s]
    if naive:
        left.plot(*zip(*naive, strict=True), "x:", label="naive")
    left.set(xscale="log", yscale="log", xlabel="workers", ylabel="seconds", title="Tick wall")
    left.legend()
    right.plot(workers, [s["tick"]["rss_peak_mb"] for s in sizes], "o-")
    right.set(xscale="log", xlabel="workers", ylabel="MB", title="Peak RSS of the tick")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--skip-1m", action="store_true", help="leave out 1,000,000 workers (~90 s of the run)"
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-inproc", action="store_true")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--page-cap", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--sweep", type=lambda v: [int(x) for x in v.split(",") if x], default=[16, 32, 128]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()

    started = time.monotonic()
    fresh_database()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU, Python {platform.python_version()}",
        "latency_ms": args.latency_ms,
        "page_cap": args.page_cap,
        "concurrency": args.concurrency,
        "targets": TARGETS,
        "sizes": {},
    }
    for workers in (10_000, 100_000, *(() if args.skip_1m else (1_000_000,))):
        measure_size(workers, args, results)
    results["duration_s"] = time.monotonic() - started
    results["summary"] = targets(results)
    table = render(results)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if chart(results, args.out.with_suffix(".png")):
        log(f"chart written to {args.out.with_suffix('.png')}")
    log(f"done in {results['duration_s']:.0f} s; results in {args.out}")
    print(table)


if __name__ == "__main__":
    main()
