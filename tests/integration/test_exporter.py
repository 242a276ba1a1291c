"""The exporter as a process: a real scrape passes promtool, and a real Prometheus agrees."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ROOT, etl_env, free_port, run_cli
from worker import cache
from worker.exporter import label_value


def wait_http(url: str, timeout_s: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def exporter(db, redis_client, simulator) -> Iterator[tuple[str, dict]]:
    """A tick against the simulator, then `luxor-etl exporter` on a free port."""
    port = free_port()
    env = etl_env(db.url.render_as_string(hide_password=False), simulator, METRICS_PORT=str(port))
    assert run_cli(env, "poll-once").returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "exporter"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", env
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.sim(hostile_names=True, subaccounts=6, workers=40)
def test_a_real_scrape_equals_the_cache_and_lints_clean(exporter, redis_client):
    url, _ = exporter
    body = httpx.get(f"{url}/metrics").text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install prometheus"
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    scraped = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "luxor_workers":
                scraped[(s.labels["subaccount"], s.labels["status"])] = s.value
    listing = cache.read_subaccounts(redis_client, cache.CacheKeys("luxor"), "BTC")
    expected = {}
    for entry in listing:
        expected[(label_value(entry["subaccount"]), "active")] = entry["active"]
        expected[(label_value(entry["subaccount"]), "inactive")] = entry["inactive"]
    assert scraped == expected and len(expected) == 12
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_healthz_fails_once_the_cache_is_gone(exporter, redis_client):
    url, _ = exporter
    redis_client.delete("luxor:v1:BTC:summary")
    response = httpx.get(f"{url}/healthz")
    assert response.status_code == 503 and "no fleet summary" in response.text
    assert "luxor_cache_age_seconds{" not in httpx.get(f"{url}/metrics").text


def test_a_real_prometheus_sees_the_fleet_as_the_cache_has_it(exporter, redis_client, tmp_path):
    url, _ = exporter
    binary = shutil.which("prometheus")
    assert binary, "prometheus is needed: apt-get install prometheus"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: luxor-etl\n    static_configs: [{{targets: ['{url[7:]}']}}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"
        wait_http(f"http://127.0.0.1:{port}/-/ready")
        summary = cache.read_summary(redis_client, cache.CacheKeys("luxor"), "BTC")
        query = 'sum by (currency) (luxor_workers{status="active"})'
        deadline = time.monotonic() + 30
        result: list = []
        while time.monotonic() < deadline and not result:
            result = httpx.get(api, params={"query": query}).json()["data"]["result"]
            time.sleep(0.5)
        assert result, "Prometheus never scraped the exporter"
        assert result[0]["metric"] == {"currency": "BTC"}
        assert float(result[0]["value"][1]) == summary["active"]
        up = httpx.get(api, params={"query": 'up{job="luxor-etl"}'}).json()["data"]["result"]
        assert up[0]["value"][1] == "1"
    finally:
        process.terminate()
        process.wait(timeout=15)
