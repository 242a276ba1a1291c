"""The Luxor client against respx: pagination, retries, auth, hostile payloads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
import respx

from worker.errors import LuxorAuthError, LuxorBadResponse, LuxorUnavailable
from worker.luxor.client import LuxorClient, parse_retry_after

BASE = "https://luxor.test/api/v2"
WORKERS = f"{BASE}/pool/workers/BTC"
TICK = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def worker(n: int, status: str = "ACTIVE", **extra: object) -> dict:
    return {
        "id": f"w{n}",
        "currency_type": "BTC",
        "subaccount_name": "site-a",
        "name": f"rig-{n:03d}",
        "firmware": "1.0",
        "hashrate": 1.0e14 if status == "ACTIVE" else 0,
        "efficiency": 0.99,
        "stale_shares": 0.0,
        "rejected_shares": 0.001,
        "last_share_time": "2026-12-03T09:59:41Z",
        "status": status,
        **extra,
    }


def page(workers: list[dict], next_url: str | None, active: int, inactive: int) -> dict:
    return {
        "currency_type": "BTC",
        "subaccounts": [{"id": 1, "name": "site-a"}],
        "total_active": active,
        "total_inactive": inactive,
        "workers": workers,
        "pagination": {
            "page_number": 1,
            "page_size": len(workers),
            "item_count": len(workers),
            "previous_page_url": None,
            "next_page_url": next_url,
        },
    }


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(sleep: Sleeps | None = None, **options: object) -> LuxorClient:
    return LuxorClient(
        "secret-key-123",
        BASE,
        transport=httpx.AsyncHTTPTransport(),
        sleep=sleep or Sleeps(),
        **options,
    )


def fetch(c: LuxorClient, subaccount: str = "site-a"):
    async def go():
        async with c:
            return await c.fetch_subaccount("BTC", subaccount, TICK)

    return asyncio.run(go())


def pages_by_number(router: respx.MockRouter, pages: dict[int, dict]) -> respx.Route:
    def reply(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params.get("page_number", "1"))
        return httpx.Response(200, json=pages[number])

    return router.get(WORKERS).mock(side_effect=reply)


@respx.mock
def test_follows_every_page_even_when_the_server_caps_the_size() -> None:
    pages = {
        1: page([worker(1), worker(2)], f"{WORKERS}?subaccount_names=site-a&page_number=2", 4, 1),
        2: page([worker(3), worker(4)], "?subaccount_names=site-a&page_number=3", 4, 1),
        3: page([worker(5, "INACTIVE")], None, 4, 1),
    }
    route = pages_by_number(respx.mock, pages)
    snap = fetch(client(page_size=1000))
    assert [w.name for w in snap.workers] == [f"rig-{n:03d}" for n in range(1, 6)]
    assert (snap.active, snap.inactive) == (4, 1)
    assert snap.hashrate_hs == pytest.approx(4.0e14)
    assert route.call_count == 3
    first = route.calls[0].request
    assert first.headers["authorization"] == "secret-key-123"
    assert first.url.params["subaccount_names"] == "site-a"
    assert first.url.params["page_size"] == "1000"


@respx.mock
def test_string_hashrates_nulls_missing_and_extra_fields_are_tolerated() -> None:
    workers = [
        worker(1, hashrate="1035827914295214", surprise={"nested": True}),
        worker(2, hashrate=None, last_share_time=None, efficiency=None, firmware=None),
        {"id": 3, "name": "rig-003", "status": "inactive"},
    ]
    respx.get(WORKERS).mock(return_value=httpx.Response(200, json=page(workers, None, 2, 1)))
    snap = fetch(client())
    first, second, third = snap.workers
    assert first.hashrate_hs == 1035827914295214.0
    assert second.hashrate_hs is None and second.last_share_time is None
    assert third.status == "INACTIVE" and third.id == "3" and third.efficiency is None
    assert snap.hashrate_hs == pytest.approx(1035827914295214.0)  # unknown is not summed as 0


@respx.mock
def test_hostile_names_are_data() -> None:
    hostile = ['rig "1"', "a:b:*", "矿机\n2", "x" * 300, "nul\x00byte"]
    workers = [worker(i, name=n) for i, n in enumerate(hostile)]
    respx.get(WORKERS).mock(
        return_value=httpx.Response(200, json=page(workers, None, len(hostile), 0))
    )
    snap = fetch(client())
    assert [w.name for w in snap.workers] == hostile


@respx.mock
def test_retries_429_honouring_retry_after_then_succeeds() -> None:
    sleeps = Sleeps()
    respx.get(WORKERS).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503),
            httpx.Response(200, json=page([worker(1)], None, 1, 0)),
        ]
    )
    snap = fetch(client(sleeps, backoff_base_s=0.5))
    assert len(snap.workers) == 1
    assert sleeps.delays[0] == pytest.approx(7.0)
    assert 0.5 <= sleeps.delays[1] <= 1.0  # second attempt: base * 2, with jitter


@respx.mock
def test_gives_up_after_max_attempts_as_unavailable() -> None:
    sleeps = Sleeps()
    route = respx.get(WORKERS).mock(return_value=httpx.Response(500, text="<html>oops</html>"))
    with pytest.raises(LuxorUnavailable, match="HTTP 500 after 4 attempts"):
        fetch(client(sleeps, max_attempts=4))
    assert route.call_count == 4
    assert len(sleeps.delays) == 3


@respx.mock
def test_network_errors_and_malformed_json_are_retried() -> None:
    respx.get(WORKERS).mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, content=b'{"workers": [tru'),
            httpx.Response(200, json={"workers": "not a list", "total_active": 1}),
            httpx.Response(200, json=page([worker(1)], None, 1, 0)),
        ]
    )
    assert len(fetch(client(max_attempts=4)).workers) == 1


@respx.mock
def test_a_too_long_retry_after_gives_up_instead_of_stalling_the_tick() -> None:
    sleeps = Sleeps()
    respx.get(WORKERS).mock(return_value=httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(LuxorUnavailable, match="Retry-After"):
        fetch(client(sleeps))
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [401, 403])
@respx.mock
def test_auth_errors_fail_fast_without_retry(status: int) -> None:
    route = respx.get(WORKERS).mock(
        return_value=httpx.Response(
            status, json={"error": {"code": "unauthorized", "message": "bad key"}}
        )
    )
    with pytest.raises(LuxorAuthError) as caught:
        fetch(client())
    assert route.call_count == 1
    assert "secret-key-123" not in str(caught.value)


@respx.mock
def test_a_rejected_page_size_steps_down_to_100_and_is_remembered() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if int(request.url.params["page_size"]) > 100:
            return httpx.Response(
                400, json={"error": {"code": "invalid_request", "message": "page_size"}}
            )
        return httpx.Response(200, json=page([worker(1)], None, 1, 0))

    route = respx.get(WORKERS).mock(side_effect=reply)
    c = client(page_size=1000)

    async def go():
        async with c:
            await c.fetch_subaccount("BTC", "site-a", TICK)
            await c.fetch_subaccount("BTC", "site-a", TICK)

    asyncio.run(go())
    sizes = [call.request.url.params["page_size"] for call in route.calls]
    assert sizes == ["1000", "100", "100"]


@respx.mock
def test_a_looping_next_page_url_is_refused() -> None:
    loop = f"{WORKERS}?subaccount_names=site-a&page_number=2"
    respx.get(WORKERS).mock(
        side_effect=lambda request: httpx.Response(200, json=page([], loop, 0, 0))
    )
    with pytest.raises(LuxorBadResponse, match="loops"):
        fetch(client())


@respx.mock
def test_next_page_url_on_another_host_is_not_followed_with_the_key() -> None:
    respx.get(WORKERS).mock(
        return_value=httpx.Response(
            200, json=page([worker(1)], "https://evil.test/steal?page_number=2", 1, 0)
        )
    )
    evil = respx.get("https://evil.test/steal").mock(return_value=httpx.Response(200))
    with pytest.raises(LuxorBadResponse, match="another host"):
        fetch(client())
    assert evil.call_count == 0


@respx.mock
def test_a_repeated_page_is_refetched_and_then_refused() -> None:
    pages = {
        1: page([worker(1)], f"{WORKERS}?subaccount_names=site-a&page_number=2", 2, 0),
        2: page([worker(1)], None, 2, 0),  # the same item again: the listing moved
    }
    route = pages_by_number(respx.mock, pages)
    with pytest.raises(LuxorBadResponse, match="inconsistent"):
        fetch(client())
    assert route.call_count == 6  # three whole passes, never a partial answer


@respx.mock
def test_totals_that_disagree_with_the_list_are_never_returned() -> None:
    respx.get(WORKERS).mock(
        side_effect=[
            httpx.Response(200, json=page([worker(1)], None, 5, 0)),
            httpx.Response(200, json=page([worker(1), worker(2)], None, 2, 0)),
        ]
    )
    snap = fetch(client())
    assert (snap.active, len(snap.workers)) == (2, 2)


@respx.mock
def test_unknown_status_is_a_bad_response() -> None:
    respx.get(WORKERS).mock(
        return_value=httpx.Response(200, json=page([worker(1, status="ON_FIRE")], None, 1, 0))
    )
    with pytest.raises(LuxorBadResponse, match="ON_FIRE"):
        fetch(client())


@respx.mock
def test_list_subaccounts_pages_and_dedupes() -> None:
    url = f"{BASE}/pool/subaccounts"
    body1 = {
        "subaccounts": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "pagination": {"next_page_url": f"{url}?page_number=2"},
    }
    body2 = {"subaccounts": [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}], "pagination": {}}
    respx.get(url).mock(
        side_effect=[httpx.Response(200, json=body1), httpx.Response(200, json=body2)]
    )

    async def go():
        async with client() as c:
            return await c.list_subaccounts()

    assert asyncio.run(go()) == ["a", "b", "c"]


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 03 Dec 2026 10:00:30 GMT", now=1796292000.0) == 30.0


def test_request_observer_sees_every_attempt() -> None:
    seen: list[tuple[str, str]] = []
    with respx.mock:
        respx.get(WORKERS).mock(
            side_effect=[httpx.Response(502), httpx.Response(200, json=page([], None, 0, 0))]
        )
        fetch(client(on_request=lambda e, c: seen.append((e, c))))
    assert seen == [("workers", "502"), ("workers", "200")]
