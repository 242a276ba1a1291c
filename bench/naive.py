"""The naive tick the benchmark compares against: what a first version would write.

One request at a time with httpx's default transport, the standard `json` module, one ORM
object per worker in a wide row-per-worker table, and one Redis SET per key.
"""

from __future__ import annotations

import json
from datetime import datetime

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class NaiveWorkerSnapshot(Base):
    __tablename__ = "naive_worker_snapshots"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=True)
    observed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    currency: Mapped[str] = mapped_column(sa.Text)
    subaccount: Mapped[str] = mapped_column(sa.Text)
    worker_id: Mapped[str | None] = mapped_column(sa.Text)
    worker_name: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text)
    hashrate: Mapped[float | None] = mapped_column(sa.Float(53))
    efficiency: Mapped[float | None] = mapped_column(sa.Float(53))
    stale_shares: Mapped[float | None] = mapped_column(sa.Float(53))
    rejected_shares: Mapped[float | None] = mapped_column(sa.Float(53))
    last_share_time: Mapped[str | None] = mapped_column(sa.Text)
    firmware: Mapped[str | None] = mapped_column(sa.Text)


def create_tables(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def naive_tick(
    base_url: str,
    api_key: str,
    engine: Engine,
    redis_client: redis.Redis,
    prefix: str,
    observed_at: datetime,
    currency: str = "BTC",
) -> int:
    """One whole tick, the slow way; returns the number of workers stored."""
    stamp = observed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    fleet: dict[str, tuple[dict, list[dict]]] = {}
    with httpx.Client(headers={"authorization": api_key}, timeout=30) as http:
        names: list[str] = []
        url: str | None = f"{base_url}/pool/subaccounts"
        params: dict | None = {"page_size": 1000}
        while url:
            body = json.loads(http.get(url, params=params).content)
            names += [s["name"] for s in body["subaccounts"]]
            url, params = _next(url, body), None
        for name in names:
            workers: list[dict] = []
            url = f"{base_url}/pool/workers/{currency}"
            params = {"subaccount_names": name, "page_size": 1000}
            totals: dict = {}
            while url:
                body = json.loads(http.get(url, params=params).content)
                workers += body["workers"]
                totals = {"active": body["total_active"], "inactive": body["total_inactive"]}
                url, params = _next(url, body), None
            fleet[name] = (totals, workers)

    stored = 0
    with Session(engine) as session, session.begin():
        for name, (_, workers) in fleet.items():
            for w in workers:
                session.add(
                    NaiveWorkerSnapshot(
                        observed_at=observed_at,
                        currency=currency,
                        subaccount=name,
                        worker_id=w.get("id"),
                        worker_name=w["name"],
                        status=w["status"],
                        hashrate=float(w["hashrate"]) if w.get("hashrate") is not None else None,
                        efficiency=w.get("efficiency"),
                        stale_shares=w.get("stale_shares"),
                        rejected_shares=w.get("rejected_shares"),
                        last_share_time=w.get("last_share_time"),
                        firmware=w.get("firmware"),
                    )
                )
                stored += 1

    listing = []
    for name, (totals, workers) in sorted(fleet.items()):
        entry = {
            "schema_version": 1,
            "currency": currency,
            "subaccount": name,
            "observed_at": stamp,
            "active": totals["active"],
            "inactive": totals["inactive"],
            "hashrate": sum(float(w.get("hashrate") or 0) for w in workers),
            "stale": False,
        }
        listing.append(entry)
        key = f"{prefix}:v1:{currency}:subaccount:{name}"
        redis_client.set(key, json.dumps(entry | {"workers": workers}), ex=300)
    summary = {
        "schema_version": 1,
        "currency": currency,
        "observed_at": stamp,
        "active": sum(e["active"] for e in listing),
        "inactive": sum(e["inactive"] for e in listing),
        "hashrate": sum(e["hashrate"] for e in listing),
        "subaccounts": len(listing),
        "stale_subaccounts": [],
        "missing_subaccounts": [],
    }
    redis_client.set(f"{prefix}:v1:{currency}:subaccounts", json.dumps(listing), ex=300)
    redis_client.set(f"{prefix}:v1:{currency}:summary", json.dumps(summary), ex=300)
    return stored


def _next(url: str, body: dict) -> str | None:
    next_url = (body.get("pagination") or {}).get("next_page_url")
    return str(httpx.URL(url).join(next_url)) if next_url else None
