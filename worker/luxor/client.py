"""Async client for the Luxor V2 pool API: auth, pagination, retries, tolerant typed parsing."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec

from worker.errors import (
    LuxorAuthError,
    LuxorBadResponse,
    LuxorRequestRejected,
    LuxorUnavailable,
)
from worker.luxor.schemas import (
    ERROR_BODY,
    SUBACCOUNTS_PAGE,
    WORKERS_PAGE,
    Pagination,
    WorkerItem,
    WorkersPage,
)
from worker.snapshot import SubaccountSnapshot, WorkerSample

log = logging.getLogger(__name__)

T = TypeVar("T")
RequestObserver = Callable[[str, str], None]  # (endpoint, code) after every attempt
Sleep = Callable[[float], Awaitable[None]]
BeforeRequest = Callable[[], Awaitable[None]]
OnThrottled = Callable[[float], Awaitable[None]]  # seconds the API asked everyone to wait

RETRIABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
FALLBACK_PAGE_SIZE = 100
STATUSES = frozenset({"ACTIVE", "INACTIVE"})


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(
        self, reason: str, retry_after_s: float | None = None, throttled: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.throttled = throttled


class _Inconsistent(Exception):
    """The pages of one listing do not add up (items moved while we paged)."""


_SSL_CONTEXT: ssl.SSLContext | None = None


def default_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The production transport: aiohttp under the httpx API (scales past ~8 connections)."""
    from httpx_aiohttp import AiohttpTransport

    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        # Loading the CA bundle costs ~15 ms; one context serves every tick of the process.
        _SSL_CONTEXT = httpx.create_ssl_context()
    return AiohttpTransport(
        verify=_SSL_CONTEXT,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class LuxorClient:
    """Reads subaccounts and workers; knows nothing of storage, cache or Celery."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        page_size: int = 1000,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_pages: int = 10_000,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        on_request: RequestObserver | None = None,
        before_request: BeforeRequest | None = None,
        on_throttled: OnThrottled | None = None,
    ) -> None:
        self._before_request = before_request
        self._on_throttled = on_throttled
        self._base_url = base_url.rstrip("/")
        self._origin = _origin(self._base_url)
        self.page_size = page_size
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_pages = max_pages
        self._sleep = sleep
        self._on_request = on_request
        # Requests go straight to the transport: httpx.AsyncClient's per-request layers
        # (auth flow, redirects, cookies, hooks) cost ~0.15 ms each and none is used here.
        self._transport = transport or default_transport(max_connections)
        self._headers = httpx.Headers(
            {
                "authorization": api_key,
                "accept": "application/json",
                "accept-encoding": "gzip, deflate",
                "user-agent": f"luxor-etl (python-httpx/{httpx.__version__})",
            }
        )
        self._extensions = {
            "timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)).as_dict()
        }

    async def __aenter__(self) -> LuxorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def list_subaccounts(self) -> list[str]:
        """Names of every subaccount the key's workspace can see, in API order."""
        names: list[str] = []
        async for page in self._pages(
            "subaccounts",
            f"{self._base_url}/pool/subaccounts",
            {"page_number": 1, "page_size": self.page_size},
            SUBACCOUNTS_PAGE.decode,
        ):
            names.extend(item.name for item in page.subaccounts)
        return list(dict.fromkeys(names))

    async def fetch_subaccount(
        self,
        currency: str,
        subaccount: str,
        observed_at: datetime,
        *,
        consistency_attempts: int = 3,
    ) -> SubaccountSnapshot:
        """Every worker of one subaccount, all pages, validated; raises rather than return part."""
        for attempt in range(1, consistency_attempts + 1):
            try:
                return await self._fetch_subaccount_once(currency, subaccount, observed_at)
            except _Inconsistent as exc:
                if attempt == consistency_attempts:
                    raise LuxorBadResponse(f"workers listing inconsistent: {exc}") from None
                log.info(
                    "luxor listing changed while paging; fetching again",
                    extra={"subaccount": subaccount, "currency": currency, "reason": str(exc)},
                )
        raise AssertionError("unreachable")

    async def _fetch_subaccount_once(
        self, currency: str, subaccount: str, observed_at: datetime
    ) -> SubaccountSnapshot:
        workers: list[WorkerSample] = []
        seen_ids: set[str] = set()
        totals: tuple[int, int] | None = None
        url = f"{self._base_url}/pool/workers/{currency}"
        params = {"subaccount_names": subaccount, "page_number": 1, "page_size": self.page_size}
        async for page in self._pages("workers", url, params, WORKERS_PAGE.decode):
            page_totals = (page.total_active, page.total_inactive)
            if totals is None:
                totals = page_totals
            elif page_totals != totals:
                raise _Inconsistent(f"totals changed between pages {totals} -> {page_totals}")
            for item in page.workers:
                sample = _worker_sample(item, subaccount)
                if sample.id in seen_ids:
                    raise _Inconsistent(f"worker {sample.id!r} listed twice")
                seen_ids.add(sample.id)
                workers.append(sample)
        assert totals is not None
        active = sum(1 for w in workers if w.status == "ACTIVE")
        inactive = len(workers) - active
        if (active, inactive) != totals:
            raise _Inconsistent(
                f"totals say {totals[0]} active/{totals[1]} inactive, "
                f"pages hold {active}/{inactive}"
            )
        return SubaccountSnapshot(
            currency=currency,
            subaccount=subaccount,
            observed_at=observed_at,
            active=totals[0],
            inactive=totals[1],
            hashrate_hs=sum(w.hashrate_hs or 0.0 for w in workers),
            workers=tuple(workers),
        )

    async def _pages(
        self,
        endpoint: str,
        url: str,
        params: dict[str, Any] | None,
        decode: Callable[[bytes], T],
    ) -> Any:
        """Yield decoded pages, following `next_page_url` to the end, with a loop guard."""
        seen_urls: set[str] = set()
        first = True
        while True:
            try:
                page = await self._get(endpoint, url, params, decode)
            except LuxorRequestRejected:
                # Some deployments reject large pages outright: step down once and remember.
                if not (first and params and params.get("page_size", 0) > FALLBACK_PAGE_SIZE):
                    raise
                log.warning(
                    "luxor rejected page_size=%s; using %s from now on",
                    params["page_size"],
                    FALLBACK_PAGE_SIZE,
                )
                self.page_size = FALLBACK_PAGE_SIZE
                params = {**params, "page_size": FALLBACK_PAGE_SIZE}
                continue
            first = False
            yield page
            pagination: Pagination | None = getattr(page, "pagination", None)
            next_url = pagination.next_page_url if pagination else None
            if not next_url:
                return
            url = urljoin(url if params is None else str(httpx.URL(url, params=params)), next_url)
            params = None
            if _origin(url) != self._origin:
                raise LuxorBadResponse("next_page_url points to another host; refusing to follow")
            if url in seen_urls:
                raise LuxorBadResponse("pagination loops: next_page_url was already visited")
            seen_urls.add(url)
            if len(seen_urls) >= self._max_pages:
                raise LuxorBadResponse(f"pagination did not end after {self._max_pages} pages")

    async def _get(
        self,
        endpoint: str,
        url: str,
        params: dict[str, Any] | None,
        decode: Callable[[bytes], T],
    ) -> T:
        """One logical GET: retries on 429, 5xx, network errors and garbled bodies."""
        last_reason = "no attempt made"
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._attempt(endpoint, url, params, decode)
            except _Retry as exc:
                last_reason = exc.reason
                if attempt == self._max_attempts:
                    break
                delay = self._backoff_s(attempt)
                if exc.retry_after_s is not None:
                    if exc.retry_after_s > self._backoff_max_s:
                        last_reason += f" (Retry-After {exc.retry_after_s:.0f}s is too long)"
                        break
                    delay = max(delay, exc.retry_after_s)
                if exc.throttled and self._on_throttled is not None:
                    await self._on_throttled(delay)
                log.info(
                    "luxor %s attempt %d failed (%s); retrying in %.2fs",
                    endpoint,
                    attempt,
                    exc.reason,
                    delay,
                )
                await self._sleep(delay)
        raise LuxorUnavailable(f"{endpoint}: {last_reason} after {attempt} attempts")

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _attempt(
        self,
        endpoint: str,
        url: str,
        params: dict[str, Any] | None,
        decode: Callable[[bytes], T],
    ) -> T:
        if self._before_request is not None:
            await self._before_request()
        try:
            # The overall bound catches servers that trickle bytes under the read timeout.
            async with asyncio.timeout(self._timeout_s * 3):
                request = httpx.Request(
                    "GET", url, params=params, headers=self._headers, extensions=self._extensions
                )
                response = await self._transport.handle_async_request(request)
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            self._observe(endpoint, "timeout")
            raise _Retry("timed out") from None
        except httpx.TransportError as exc:
            self._observe(endpoint, "network")
            raise _Retry(f"network error ({type(exc).__name__})") from None
        status = response.status_code
        self._observe(endpoint, str(status))
        if status in (401, 403):
            raise LuxorAuthError(f"{endpoint}: the API refused the key ({status})")
        if status in RETRIABLE_STATUS or status >= 500:
            raise _Retry(f"HTTP {status}", parse_retry_after(response.headers.get("retry-after")))
        if status != 200:
            raise LuxorRequestRejected(f"{endpoint}: HTTP {status}: {_error_message(body)}")
        try:
            return decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _Retry(f"unusable body: {_short(str(exc))}") from None

    def _observe(self, endpoint: str, code: str) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, code)


# The usual spellings map to one shared string each, so a large fleet holds no copies.
_STATUS_OF = {s: s.upper() for s in ("ACTIVE", "INACTIVE", "active", "inactive")}


def _worker_sample(item: WorkerItem, subaccount: str) -> WorkerSample:
    status = _STATUS_OF.get(item.status) or item.status.upper()
    if status not in STATUSES:
        raise LuxorBadResponse(
            f"worker status {_short(item.status)!r} is neither ACTIVE nor INACTIVE"
        )
    if item.subaccount_name is not None and item.subaccount_name != subaccount:
        raise LuxorBadResponse("the API returned workers of another subaccount")
    name = item.name
    if not name:
        raise LuxorBadResponse("a worker has an empty name")
    return WorkerSample(
        id=str(item.id) if item.id is not None else name,
        name=name,
        status=status,
        hashrate_hs=item.hashrate,
        efficiency=item.efficiency,
        stale_shares=item.stale_shares,
        rejected_shares=item.rejected_shares,
        last_share_time=item.last_share_time,
        firmware=sys.intern(item.firmware) if item.firmware is not None else None,
    )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _error_message(body: bytes) -> str:
    try:
        error = ERROR_BODY.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _short(body.decode("utf-8", "replace")) or "no body"
    if error is None:
        return "no error detail"
    return _short(f"{error.code or 'error'}: {error.message or ''}")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["LuxorClient", "WorkersPage", "default_transport", "parse_retry_after"]
