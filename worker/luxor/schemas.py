"""Typed shapes of the Luxor V2 responses we read; unknown fields are ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# NaN and absurd values are refused; 1e24 H/s is far above any single machine.
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e24)]


class Pagination(msgspec.Struct):
    page_number: int | None = None
    page_size: int | None = None
    item_count: int | None = None
    previous_page_url: str | None = None
    next_page_url: str | None = None


class SubaccountItem(msgspec.Struct):
    name: str
    id: int | str | None = None


class SubaccountsPage(msgspec.Struct):
    subaccounts: list[SubaccountItem]
    pagination: Pagination | None = None


class WorkerItem(msgspec.Struct):
    name: str
    status: str
    id: str | int | None = None
    subaccount_name: str | None = None
    hashrate: NonNegative | None = None
    efficiency: NonNegative | None = None
    stale_shares: NonNegative | None = None
    rejected_shares: NonNegative | None = None
    last_share_time: datetime | None = None
    firmware: str | None = None


class WorkersPage(msgspec.Struct):
    workers: list[WorkerItem]
    total_active: Annotated[int, msgspec.Meta(ge=0)]
    total_inactive: Annotated[int, msgspec.Meta(ge=0)]
    pagination: Pagination | None = None


class ErrorDetail(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail | None = None


# strict=False lets numbers arrive as numeric strings ("1035827914295214").
WORKERS_PAGE = msgspec.json.Decoder(WorkersPage, strict=False)
SUBACCOUNTS_PAGE = msgspec.json.Decoder(SubaccountsPage, strict=False)
ERROR_BODY = msgspec.json.Decoder(ErrorBody, strict=False)
