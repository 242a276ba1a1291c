"""The Luxor V2 simulator over real HTTP on loopback."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from worker.luxor.simulator import (
    FAULT_KINDS,
    HOSTILE_SUBACCOUNT_NAMES,
    HOSTILE_WORKER_NAMES,
    RETRIABLE_FAULT_KINDS,
    Fleet,
    RunningSimulator,
    SimulatorConfig,
    parse_fault_spec,
)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def config(**kw: Any) -> SimulatorConfig:
    kw.setdefault("port", 0)
    kw.setdefault("drift_interval_s", 0)
    return SimulatorConfig(**kw)


@pytest.fixture(scope="module")
def shared() -> Iterator[RunningSimulator]:
    with RunningSimulator(config()) as sim:
        yield sim


@pytest.fixture
def sim(shared: RunningSimulator) -> RunningSimulator:
    httpx.post(f"{shared.control_url}/reset").raise_for_status()
    return shared


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"authorization": sim.api_key}, timeout=5) as c:
        yield c


def workers_url(sim: RunningSimulator, currency: str = "BTC") -> str:
    return f"{sim.base_url}/pool/workers/{currency}"


def collect(client: httpx.Client, url: str, params: dict[str, Any] | None = None) -> list[dict]:
    """Every page, following next_page_url until it is null."""
    pages = []
    resp = client.get(url, params=params)
    while True:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body)
        nxt = body["pagination"]["next_page_url"]
        if nxt is None:
            return pages
        assert len(pages) < 1000
        resp = client.get(nxt)


def arm(sim: RunningSimulator, **fault: Any) -> dict:
    resp = httpx.post(f"{sim.control_url}/faults", json=fault)
    assert resp.status_code == 200, resp.text
    return resp.json()["fault"]


def stats(sim: RunningSimulator) -> dict:
    return httpx.get(f"{sim.control_url}/stats").json()


def without_share_time(workers: list[dict]) -> list[dict]:
    return [{k: v for k, v in w.items() if k != "last_share_time"} for w in workers]


# ---------------------------------------------------------------- auth and parameters


def test_auth_takes_the_raw_key_only(sim: RunningSimulator) -> None:
    url = f"{sim.base_url}/pool/subaccounts"
    assert httpx.get(url, headers={"authorization": sim.api_key}).status_code == 200
    for headers in ({}, {"authorization": "nope"}, {"authorization": f"Bearer {sim.api_key}"}):
        for target in (url, workers_url(sim) + "?subaccount_names=site-00"):
            resp = httpx.get(target, headers=headers)
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "unauthorized"
    assert stats(sim)["requests"]["subaccounts"]["401"] == 3


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/pool/workers/BTC", {"subaccount_names": "site-00", "page_number": "0"}),
        ("/pool/workers/BTC", {"subaccount_names": "site-00", "page_size": "abc"}),
        ("/pool/workers/BTC", {"subaccount_names": "site-00", "page_size": "-5"}),
        ("/pool/workers/BTC", {"subaccount_names": "site-00", "status": "SLEEPING"}),
        ("/pool/workers/XYZ", {"subaccount_names": "site-00"}),
        ("/pool/subaccounts", {"page_number": "1.5"}),
    ],
)
def test_bad_parameters_get_400_error_body(
    sim: RunningSimulator, client: httpx.Client, path: str, params: dict
) -> None:
    resp = client.get(sim.base_url + path, params=params)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"
    assert resp.json()["error"]["message"]


def test_unknown_subaccount_and_route_get_404_error_body(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    for url, params in (
        (workers_url(sim), {"subaccount_names": "site-00,nope"}),
        (f"{sim.base_url}/pool/subaccounts/nope", None),
        (f"{sim.base_url}/pool/nothing-here", None),
    ):
        resp = client.get(url, params=params)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------- listing and paging


def test_paging_collects_exactly_the_fleet(sim: RunningSimulator, client: httpx.Client) -> None:
    names = sim.fleet.subaccount_names()
    assert names == ["site-00", "site-01", "site-02"]
    seen_ids: set[str] = set()
    for name in names:
        pages = collect(client, workers_url(sim), {"subaccount_names": name, "page_size": 7})
        assert len(pages) == 8  # 50 workers / 7 per page
        workers = [w for p in pages for w in p["workers"]]
        ids = [w["id"] for w in workers]
        assert len(ids) == len(set(ids)) == 50
        assert not seen_ids & set(ids)
        seen_ids |= set(ids)
        truth = sim.fleet.workers(name)
        assert without_share_time(workers) == without_share_time(truth)
        active, inactive = sim.fleet.totals(name)
        for i, page in enumerate(pages, start=1):
            assert page["currency_type"] == "BTC"
            assert page["subaccounts"] == [{"id": names.index(name) + 1, "name": name}]
            assert (page["total_active"], page["total_inactive"]) == (active, inactive)
            pag = page["pagination"]
            assert set(pag) == {
                "page_number",
                "page_size",
                "item_count",
                "previous_page_url",
                "next_page_url",
            }
            assert pag["page_number"] == i
            assert pag["page_size"] == 7
            assert pag["item_count"] == len(page["workers"])
            if i == 1:
                assert pag["previous_page_url"] is None
            else:
                assert f"page_number={i - 1}" in pag["previous_page_url"]
            if pag["next_page_url"] is not None:
                assert pag["next_page_url"].startswith(sim.base_url + "/pool/workers/BTC?")
        assert active + inactive == 50
        assert active == sum(w["status"] == "ACTIVE" for w in workers)


def test_page_beyond_the_end_is_empty(sim: RunningSimulator, client: httpx.Client) -> None:
    body = client.get(
        workers_url(sim), params={"subaccount_names": "site-00", "page_number": 99}
    ).json()
    assert body["workers"] == []
    assert body["pagination"]["next_page_url"] is None
    assert body["total_active"] + body["total_inactive"] == 50


def test_page_size_is_capped_silently(sim: RunningSimulator, client: httpx.Client) -> None:
    params = {"subaccount_names": "site-00,site-01,site-02", "page_size": 1000}
    pages = collect(client, workers_url(sim), params)
    assert [p["pagination"]["page_size"] for p in pages] == [100, 100]
    assert [len(p["workers"]) for p in pages] == [100, 50]
    assert "page_size=100" in pages[0]["pagination"]["next_page_url"]
    workers = [w for p in pages for w in p["workers"]]
    assert len({w["id"] for w in workers}) == 150
    assert pages[0]["total_active"] + pages[0]["total_inactive"] == 150
    assert [s["name"] for s in pages[0]["subaccounts"]] == ["site-00", "site-01", "site-02"]


def test_repeated_and_comma_separated_names_agree(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    comma = collect(client, workers_url(sim), {"subaccount_names": "site-02,site-00"})
    repeated = collect(
        client, workers_url(sim), [("subaccount_names", "site-02"), ("subaccount_names", "site-00")]
    )
    assert (
        "subaccount_names=site-02&subaccount_names=site-00"
        in (repeated[0]["pagination"]["next_page_url"])
    )
    ids = [w["id"] for p in comma for w in p["workers"]]
    assert ids == [w["id"] for p in repeated for w in p["workers"]]
    assert len(set(ids)) == 100
    assert [w["subaccount_name"] for w in comma[0]["workers"]] == ["site-02"] * 10


def test_reject_page_size_over() -> None:
    with (
        RunningSimulator(config(reject_page_size_over=100)) as sim,
        httpx.Client(headers={"authorization": sim.api_key}) as client,
    ):
        params = {"subaccount_names": "site-00", "page_size": 1000}
        resp = client.get(workers_url(sim), params=params)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid_request"
        ok = client.get(workers_url(sim), params={"subaccount_names": "site-00", "page_size": 100})
        assert ok.status_code == 200
        assert len(ok.json()["workers"]) == 50


def test_status_filter(sim: RunningSimulator, client: httpx.Client) -> None:
    httpx.post(f"{sim.control_url}/workers/down", json={"subaccount": "site-01", "count": 4})
    active, inactive = sim.fleet.totals("site-01")
    for status, expected in (("ACTIVE", active), ("INACTIVE", inactive)):
        pages = collect(client, workers_url(sim), {"subaccount_names": "site-01", "status": status})
        workers = [w for p in pages for w in p["workers"]]
        assert len(workers) == expected
        assert {w["status"] for w in workers} == {status}


def test_worker_fields_and_hashrate_types(sim: RunningSimulator, client: httpx.Client) -> None:
    pages = collect(client, workers_url(sim), {"page_size": 100})
    workers = [w for p in pages for w in p["workers"]]
    assert len(workers) == 150
    kinds = {type(w["hashrate"]) for w in workers}
    assert str in kinds
    assert kinds & {int, float}
    strings = [w for w in workers if isinstance(w["hashrate"], str)]
    assert 0.15 < len(strings) / len(workers) < 0.45
    for w in workers:
        hashrate = float(w["hashrate"])
        if isinstance(w["hashrate"], str):
            assert w["hashrate"].isdigit()
        if w["status"] == "ACTIVE":
            assert 0.89e14 < hashrate < 1.11e14
            assert ISO_Z.match(w["last_share_time"])
        else:
            assert w["status"] == "INACTIVE"
            assert hashrate == 0
        assert 0.95 <= w["efficiency"] <= 1.0
        assert 0 <= w["stale_shares"] < 0.01
        assert 0 <= w["rejected_shares"] < 0.01
        assert w["currency_type"] == "BTC"
        assert re.fullmatch(r"rig-\d{5}", w["name"])


def test_never_shared_workers_have_no_last_share_time() -> None:
    fleet = Fleet(config(workers=400, inactive_fraction=0.5, seed=3))
    workers = fleet.workers("site-00")
    absent = [w for w in workers if "last_share_time" not in w]
    null = [w for w in workers if w.get("last_share_time", "") is None]
    assert absent
    assert null
    assert all(w["status"] == "INACTIVE" for w in absent + null)


def test_subaccounts_endpoint(sim: RunningSimulator, client: httpx.Client) -> None:
    pages = collect(client, f"{sim.base_url}/pool/subaccounts", {"page_size": 2})
    assert len(pages) == 2
    subs = [s for p in pages for s in p["subaccounts"]]
    assert [s["name"] for s in subs] == ["site-00", "site-01", "site-02"]
    for s in subs:
        assert set(s) == {"id", "name", "site_id", "created_at", "url"}
        assert ISO_Z.match(s["created_at"])
        assert s["url"].startswith(sim.base_url)
        one = client.get(f"{sim.base_url}/pool/subaccounts/{s['name']}")
        assert one.status_code == 200
        assert one.json() == s
    site = client.get(f"{sim.base_url}/pool/subaccounts", params={"site_id": subs[0]["site_id"]})
    assert len(site.json()["subaccounts"]) == 3


def test_subaccounts_page_size_cap() -> None:
    with RunningSimulator(config(subaccounts=30, workers=1, max_page_size=8)) as sim:
        with httpx.Client(headers={"authorization": sim.api_key}) as client:
            pages = collect(client, f"{sim.base_url}/pool/subaccounts", {"page_size": 50})
        assert [p["pagination"]["page_size"] for p in pages] == [8, 8, 8, 8]
        names = [s["name"] for p in pages for s in p["subaccounts"]]
        assert names == [f"site-{i:02d}" for i in range(30)]


# ---------------------------------------------------------------- control API


def test_control_down_up_changes_totals(sim: RunningSimulator, client: httpx.Client) -> None:
    def totals() -> tuple[int, int]:
        body = client.get(workers_url(sim), params={"subaccount_names": "site-00"}).json()
        return body["total_active"], body["total_inactive"]

    active, inactive = totals()
    down = httpx.post(
        f"{sim.control_url}/workers/down", json={"subaccount": "site-00", "count": 5}
    ).json()
    assert len(down["affected"]) == 5
    assert (down["active"], down["inactive"]) == (active - 5, inactive + 5)
    assert totals() == (active - 5, inactive + 5)
    truth = {w["name"]: w for w in sim.fleet.workers("site-00")}
    for name in down["affected"]:
        assert truth[name]["status"] == "INACTIVE"
        assert float(truth[name]["hashrate"]) == 0

    up = httpx.post(
        f"{sim.control_url}/workers/up",
        json={"subaccount": "site-00", "names": down["affected"][:2]},
    ).json()
    assert up["affected"] == down["affected"][:2]
    assert totals() == (active - 3, inactive + 3)

    state = httpx.get(f"{sim.control_url}/state").json()
    row = next(r for r in state["subaccounts"] if r["name"] == "site-00")
    assert (row["active"], row["inactive"], row["workers"]) == (active - 3, inactive + 3, 50)
    assert row["hashrate"] > 0
    assert state["totals"]["BTC"]["workers"] == 150

    bad = httpx.post(f"{sim.control_url}/workers/down", json={"subaccount": "nope", "count": 1})
    assert bad.status_code == 404
    bad = httpx.post(
        f"{sim.control_url}/workers/down", json={"subaccount": "site-00", "names": ["ghost"]}
    )
    assert bad.status_code == 404


def test_control_add_remove_workers_and_subaccounts(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    added = httpx.post(
        f"{sim.control_url}/workers/add", json={"subaccount": "site-01", "count": 3}
    ).json()
    assert added["affected"] == ["rig-00050", "rig-00051", "rig-00052"]
    assert added["workers"] == 53
    removed = httpx.post(
        f"{sim.control_url}/workers/remove",
        json={"subaccount": "site-01", "names": ["rig-00000", "rig-00051"]},
    ).json()
    assert removed["workers"] == 51
    pages = collect(client, workers_url(sim), {"subaccount_names": "site-01", "page_size": 20})
    names = [w["name"] for p in pages for w in p["workers"]]
    assert len(names) == 51
    assert "rig-00050" in names
    assert "rig-00000" not in names
    assert "rig-00051" not in names

    resp = httpx.post(f"{sim.control_url}/subaccounts/add", json={"name": "new site", "workers": 4})
    assert resp.status_code == 200
    assert resp.json()["subaccount"]["name"] == "new site"
    subs = client.get(f"{sim.base_url}/pool/subaccounts").json()["subaccounts"]
    assert [s["name"] for s in subs][-1] == "new site"
    body = client.get(workers_url(sim), params={"subaccount_names": "new site"}).json()
    assert len(body["workers"]) == 4
    dup = httpx.post(f"{sim.control_url}/subaccounts/add", json={"name": "new site"})
    assert dup.status_code == 409

    gone = httpx.post(f"{sim.control_url}/subaccounts/remove", json={"name": "site-00"})
    assert gone.json() == {"removed": "site-00"}
    resp = client.get(workers_url(sim), params={"subaccount_names": "site-00"})
    assert resp.status_code == 404
    assert sim.fleet.subaccount_names() == ["site-01", "site-02", "new site"]


def test_reset_restores_the_seeded_fleet(sim: RunningSimulator) -> None:
    before = sim.fleet.workers("site-00")
    httpx.post(f"{sim.control_url}/workers/remove", json={"subaccount": "site-00", "count": 10})
    httpx.post(f"{sim.control_url}/subaccounts/remove", json={"name": "site-02"})
    arm(sim, kind="500", count=5)
    httpx.post(f"{sim.control_url}/reset").raise_for_status()
    assert without_share_time(sim.fleet.workers("site-00")) == without_share_time(before)
    assert sim.fleet.subaccount_names() == ["site-00", "site-01", "site-02"]
    assert httpx.get(f"{sim.control_url}/faults").json() == {"faults": []}
    assert stats(sim) == {"requests": {}, "requests_total": 0, "faults_injected": {}}


def test_stats_count_requests_and_faults(sim: RunningSimulator, client: httpx.Client) -> None:
    client.get(workers_url(sim), params={"subaccount_names": "site-00"})
    client.get(f"{sim.base_url}/pool/subaccounts")
    arm(sim, kind="503", endpoint="workers")
    client.get(workers_url(sim), params={"subaccount_names": "site-00"})
    body = stats(sim)
    assert body["requests"] == {"subaccounts": {"200": 1}, "workers": {"200": 1, "503": 1}}
    assert body["requests_total"] == 3
    assert body["faults_injected"] == {"503": 1}
    state = httpx.get(f"{sim.control_url}/state").json()
    assert state["requests"]["requests_total"] == 3


def test_control_rejects_bad_fault_requests(sim: RunningSimulator) -> None:
    for body in (
        {"kind": "meteor"},
        {"kind": "500", "probability": 2},
        {"kind": "500", "endpoint": "elsewhere"},
        {"kind": "500", "count": 0},
    ):
        resp = httpx.post(f"{sim.control_url}/faults", json=body)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid_request"


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("429", 429, "rate_limited"),
        ("500", 500, "internal_error"),
        ("502", 502, "bad_gateway"),
        ("503", 503, "service_unavailable"),
        ("401", 401, "unauthorized"),
        ("400", 400, "invalid_request"),
    ],
)
def test_status_faults_fire_count_times(
    sim: RunningSimulator, client: httpx.Client, kind: str, status: int, code: str
) -> None:
    arm(sim, kind=kind, count=2)
    params = {"subaccount_names": "site-00"}
    for _ in range(2):
        resp = client.get(workers_url(sim), params=params)
        assert resp.status_code == status
        assert resp.json()["error"]["code"] == code
        assert "retry-after" not in resp.headers
    assert client.get(workers_url(sim), params=params).status_code == 200
    assert stats(sim)["faults_injected"] == {kind: 2}


def test_429_with_retry_after(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="429_retry_after")
    arm(sim, kind="429_retry_after", retry_after_s=7)
    first = client.get(f"{sim.base_url}/pool/subaccounts")
    second = client.get(f"{sim.base_url}/pool/subaccounts")
    assert (first.status_code, first.headers["retry-after"]) == (429, "1")
    assert (second.status_code, second.headers["retry-after"]) == (429, "7")
    assert client.get(f"{sim.base_url}/pool/subaccounts").status_code == 200


def test_html_fault(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="html")
    resp = client.get(f"{sim.base_url}/pool/subaccounts")
    assert resp.status_code == 502
    assert resp.headers["content-type"].startswith("text/html")
    assert "<html>" in resp.text
    with pytest.raises(json.JSONDecodeError):
        resp.json()


def test_reset_fault_closes_the_connection(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="reset")
    with pytest.raises(httpx.TransportError):
        client.get(f"{sim.base_url}/pool/subaccounts")
    assert client.get(f"{sim.base_url}/pool/subaccounts").status_code == 200
    assert stats(sim)["requests"]["subaccounts"] == {"200": 1, "reset": 1}


def test_timeout_fault_delays_then_answers(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="timeout", delay_s=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{sim.base_url}/pool/subaccounts", timeout=0.2)
    arm(sim, kind="timeout", delay_s=0.3)
    started = time.monotonic()
    resp = client.get(f"{sim.base_url}/pool/subaccounts", timeout=5)
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_hang_fault_never_answers(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="hang")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{sim.base_url}/pool/subaccounts", timeout=0.3)
    assert time.monotonic() - started < 2
    assert client.get(f"{sim.base_url}/pool/subaccounts").status_code == 200


def test_truncated_and_malformed_bodies(sim: RunningSimulator, client: httpx.Client) -> None:
    params = {"subaccount_names": "site-00"}
    full = client.get(workers_url(sim), params=params).content
    arm(sim, kind="truncated")
    arm(sim, kind="malformed")
    truncated = client.get(workers_url(sim), params=params)
    assert truncated.status_code == 200
    assert truncated.headers["content-type"].startswith("application/json")
    assert full.startswith(truncated.content)
    assert 0 < len(truncated.content) < len(full)
    malformed = client.get(workers_url(sim), params=params)
    assert malformed.status_code == 200
    for resp in (truncated, malformed):
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.content)


def test_wrong_types_and_missing_fields(sim: RunningSimulator, client: httpx.Client) -> None:
    params = {"subaccount_names": "site-00"}
    arm(sim, kind="wrong_types")
    arm(sim, kind="missing_fields")
    arm(sim, kind="missing_fields", fields=["pagination"])
    wrong = client.get(workers_url(sim), params=params).json()
    assert wrong["total_active"] == "lots"
    assert isinstance(wrong["workers"], dict)
    missing = client.get(workers_url(sim), params=params).json()
    assert "workers" not in missing
    assert "total_active" not in missing
    assert "total_inactive" in missing
    custom = client.get(workers_url(sim), params=params).json()
    assert "pagination" not in custom
    assert "workers" in custom
    arm(sim, kind="wrong_types", endpoint="subaccounts")
    arm(sim, kind="missing_fields", endpoint="subaccounts")
    subs = client.get(f"{sim.base_url}/pool/subaccounts").json()
    assert isinstance(subs["subaccounts"], dict)
    assert "subaccounts" not in client.get(f"{sim.base_url}/pool/subaccounts").json()


def test_loop_pagination(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="loop_pagination", probability=1.0)
    url = workers_url(sim)
    resp = client.get(url, params={"subaccount_names": "site-00", "page_size": 20})
    for _ in range(5):
        pag = resp.json()["pagination"]
        assert pag["page_number"] == 1
        assert "page_number=1" in pag["next_page_url"]
        resp = client.get(pag["next_page_url"])
    # A single-page listing loops too.
    last = client.get(url, params={"subaccount_names": "site-00", "page_size": 100}).json()
    assert "page_number=1" in last["pagination"]["next_page_url"]
    httpx.delete(f"{sim.control_url}/faults").raise_for_status()
    pages = collect(client, url, {"subaccount_names": "site-00", "page_size": 20})
    assert len(pages) == 3


def test_repeat_page(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="repeat_page", endpoint="workers")
    pages = collect(client, workers_url(sim), {"subaccount_names": "site-00", "page_size": 20})
    ids = [[w["id"] for w in p["workers"]] for p in pages]
    assert ids[0] == ids[1]
    assert pages[1]["pagination"]["page_number"] == 2
    assert pages[1]["pagination"]["next_page_url"] is not None
    assert len({i for page in ids for i in page}) == 30  # page 2's real items were never seen


def test_shift_items(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="shift_items", page=2)
    pages = collect(client, workers_url(sim), {"subaccount_names": "site-00", "page_size": 10})
    ids = [w["id"] for p in pages for w in p["workers"]]
    truth = [w["id"] for w in sim.fleet.workers("site-00")]
    assert len(ids) == 50
    assert len(set(ids)) == 49  # one duplicate ...
    assert len(set(truth) - set(ids)) == 1  # ... and one worker never seen
    assert pages[0]["total_active"] + pages[0]["total_inactive"] == 50


def test_fault_filters(sim: RunningSimulator, client: httpx.Client) -> None:
    arm(sim, kind="500", endpoint="subaccounts")
    arm(sim, kind="502", subaccount="site-02")
    arm(sim, kind="503", page=3)
    assert client.get(workers_url(sim), params={"subaccount_names": "site-00"}).status_code == 200
    assert client.get(f"{sim.base_url}/pool/subaccounts").status_code == 500
    site2 = client.get(workers_url(sim), params={"subaccount_names": "site-01,site-02"})
    assert site2.status_code == 502
    pages = [
        client.get(workers_url(sim), params={"subaccount_names": "site-00", "page_number": n})
        for n in (1, 2, 3, 3)
    ]
    assert [p.status_code for p in pages] == [200, 200, 503, 200]
    assert httpx.get(f"{sim.control_url}/faults").json() == {"faults": []}


def test_probability_faults_until_cleared(sim: RunningSimulator, client: httpx.Client) -> None:
    fault = arm(sim, kind="500", probability=0.5)
    assert fault["probability"] == 0.5
    codes = [client.get(f"{sim.base_url}/pool/subaccounts").status_code for _ in range(120)]
    assert set(codes) == {200, 500}
    assert 30 < codes.count(500) < 90
    assert httpx.delete(f"{sim.control_url}/faults").json() == {"cleared": 1}
    assert all(client.get(f"{sim.base_url}/pool/subaccounts").status_code == 200 for _ in range(20))


def test_delete_one_fault(sim: RunningSimulator, client: httpx.Client) -> None:
    first = arm(sim, kind="500", count=3)
    arm(sim, kind="503", count=1)
    assert httpx.delete(f"{sim.control_url}/faults/{first['id']}").status_code == 200
    assert client.get(f"{sim.base_url}/pool/subaccounts").status_code == 503
    assert httpx.delete(f"{sim.control_url}/faults/{first['id']}").status_code == 404


def test_every_fault_kind_can_be_armed(sim: RunningSimulator) -> None:
    for kind in FAULT_KINDS:
        arm(sim, kind=kind, endpoint="subaccounts", subaccount="nobody")
    listed = httpx.get(f"{sim.control_url}/faults").json()["faults"]
    assert [f["kind"] for f in listed] == list(FAULT_KINDS)


def test_faults_option_from_config() -> None:
    assert parse_fault_spec("0.3") == [("random", 0.3)]
    assert parse_fault_spec("429:0.1, 500:0.05") == [("429", 0.1), ("500", 0.05)]
    for bad in ("1.5", "meteor:0.1", "500", "500:x"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)

    with RunningSimulator(config(faults="503:1.0")) as sim:
        with httpx.Client(headers={"authorization": sim.api_key}) as client:
            codes = {client.get(f"{sim.base_url}/pool/subaccounts").status_code for _ in range(5)}
        assert codes == {503}

    with RunningSimulator(config(faults="0.5")) as sim:
        outcomes = []
        with httpx.Client(headers={"authorization": sim.api_key}, timeout=0.5) as client:
            for _ in range(60):
                try:
                    resp = client.get(f"{sim.base_url}/pool/subaccounts")
                    outcomes.append(resp.status_code)
                except httpx.TransportError:
                    outcomes.append(0)
        injected = stats(sim)["faults_injected"]
        assert 10 < sum(injected.values()) < 50
        assert len(injected) >= 4
        assert set(injected) <= set(RETRIABLE_FAULT_KINDS)
        assert 200 in outcomes
        # The config faults come back after a reset.
        httpx.post(f"{sim.control_url}/reset").raise_for_status()
        assert httpx.get(f"{sim.control_url}/faults").json()["faults"][0]["origin"] == "config"


# ---------------------------------------------------------------- names, seed, drift, latency


def test_hostile_names_round_trip() -> None:
    cfg = config(hostile_names=True, subaccounts=len(HOSTILE_SUBACCOUNT_NAMES) + 1, workers=20)
    with (
        RunningSimulator(cfg) as sim,
        httpx.Client(headers={"authorization": sim.api_key}) as client,
    ):
        listed = [
            s for p in collect(client, f"{sim.base_url}/pool/subaccounts") for s in p["subaccounts"]
        ]
        names = [s["name"] for s in listed]
        assert names == [*HOSTILE_SUBACCOUNT_NAMES, f"site-{len(HOSTILE_SUBACCOUNT_NAMES):02d}"]
        assert any(len(n) == 200 for n in names)
        for sub in listed:
            one = client.get(f"{sim.base_url}/pool/subaccounts/{quote(sub['name'], safe='')}")
            assert one.status_code == 200, sub["name"]
            assert one.json()["name"] == sub["name"]
            assert client.get(sub["url"]).json()["name"] == sub["name"]
            pages = collect(
                client, workers_url(sim), {"subaccount_names": sub["name"], "page_size": 3}
            )
            assert len(pages) == 7
            workers = [w for p in pages for w in p["workers"]]
            assert without_share_time(workers) == without_share_time(sim.fleet.workers(sub["name"]))
            assert [w["name"] for w in workers[: len(HOSTILE_WORKER_NAMES)]] == list(
                HOSTILE_WORKER_NAMES
            )
            assert {w["subaccount_name"] for w in workers} == {sub["name"]}
            assert pages[0]["subaccounts"][0]["name"] == sub["name"]
        # All hostile subaccounts in one comma-separated query.
        pages = collect(
            client, workers_url(sim), {"subaccount_names": ",".join(names), "page_size": 100}
        )
        assert sum(len(p["workers"]) for p in pages) == 20 * len(names)
        down = httpx.post(
            f"{sim.control_url}/workers/down",
            json={"subaccount": names[0], "names": [HOSTILE_WORKER_NAMES[0]]},
        ).json()
        assert down["affected"] == [HOSTILE_WORKER_NAMES[0]]


def test_same_seed_same_fleet() -> None:
    def fleet_of(seed: int) -> list[dict]:
        with (
            RunningSimulator(config(seed=seed, workers=30)) as sim,
            httpx.Client(headers={"authorization": sim.api_key}) as client,
        ):
            pages = collect(client, workers_url(sim), {"page_size": 100})
            return without_share_time([w for p in pages for w in p["workers"]])

    first, again, other = fleet_of(7), fleet_of(7), fleet_of(8)
    assert first == again
    assert len(first) == 90
    assert {w["id"] for w in first}.isdisjoint({w["id"] for w in other})


def test_drift_changes_the_fleet_over_time() -> None:
    with (
        RunningSimulator(config(drift_interval_s=0.05, workers=200)) as sim,
        httpx.Client(headers={"authorization": sim.api_key}) as client,
    ):
        names = sim.fleet.subaccount_names()
        before = {w["id"]: w for n in names for w in sim.fleet.workers(n)}
        deadline = time.monotonic() + 5
        while httpx.get(f"{sim.control_url}/state").json()["drifts"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pages = collect(client, workers_url(sim), {"page_size": 100})
        after = {w["id"]: w for p in pages for w in p["workers"]}
        assert set(after) == set(before)
        flipped = [i for i, w in after.items() if w["status"] != before[i]["status"]]
        jittered = [
            i
            for i, w in after.items()
            if w["status"] == before[i]["status"] == "ACTIVE"
            and w["hashrate"] != before[i]["hashrate"]
        ]
        assert flipped
        assert len(jittered) > 500
        for i in jittered:
            ratio = float(after[i]["hashrate"]) / float(before[i]["hashrate"])
            assert 0.94 < ratio < 1.06
        forced = httpx.post(f"{sim.control_url}/drift").json()
        assert forced["flipped"] >= 1


def test_drift_keeps_totals_consistent() -> None:
    fleet = Fleet(config(subaccounts=20, workers=100, drift_fraction=0.05))
    before = {n: fleet.totals(n) for n in fleet.subaccount_names()}
    flips = sum(fleet.drift() for _ in range(20))
    assert flips > 0
    after = {n: fleet.totals(n) for n in fleet.subaccount_names()}
    assert before != after
    for name in fleet.subaccount_names():
        workers = fleet.workers(name)
        active = sum(w["status"] == "ACTIVE" for w in workers)
        assert after[name] == (active, len(workers) - active)
        assert all(float(w["hashrate"]) == 0 for w in workers if w["status"] == "INACTIVE")
    inactive = sum(i for _, i in after.values())
    assert inactive < 0.2 * 2000  # flips hover around inactive_fraction


def test_latency_is_added() -> None:
    with (
        RunningSimulator(config(latency_ms=150)) as sim,
        httpx.Client(headers={"authorization": sim.api_key}) as client,
    ):
        started = time.monotonic()
        assert client.get(f"{sim.base_url}/pool/subaccounts").status_code == 200
        assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        httpx.get(f"{sim.control_url}/state")
        assert time.monotonic() - started < 0.15


def test_large_fleet_is_cheap() -> None:
    started = time.monotonic()
    with RunningSimulator(config(subaccounts=1000, workers=100)) as sim:
        assert sim.fleet.worker_count() == 100_000
        assert time.monotonic() - started < 5
        with httpx.Client(headers={"authorization": sim.api_key}) as client:
            started = time.monotonic()
            for n in (1, 500, 1000):
                body = client.get(
                    workers_url(sim), params={"page_size": 100, "page_number": n}
                ).json()
                assert len(body["workers"]) == 100
                assert body["total_active"] + body["total_inactive"] == 100_000
            last = client.get(
                workers_url(sim), params={"subaccount_names": "site-999", "page_size": 100}
            ).json()
            assert len(last["workers"]) == 100
            assert time.monotonic() - started < 3


def test_cached_rendering_matches_the_worker_dict() -> None:
    fleet = Fleet(config(hostile_names=True, subaccounts=4, workers=200, inactive_fraction=0.3))
    for _ in range(3):
        for name in fleet.subaccount_names():
            bucket = fleet.subaccounts[name].buckets["BTC"]
            for w in bucket.workers:
                expected = json.dumps(
                    fleet.worker_dict(w), ensure_ascii=False, separators=(",", ":")
                )
                assert fleet.render(w) == expected
        fleet.drift()
