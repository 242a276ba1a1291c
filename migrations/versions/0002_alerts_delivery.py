"""Alert delivery: episode dedup keys, a per-currency alert cursor, a notification queue.

`alerts` gains `dedup_key` (unique), `notifications` (what each channel was told, and when)
and `updated_at`; `alert_cursors` holds the last tick the rules ran for per currency;
`alert_notifications` holds every notification from the moment it is decided until it is
delivered or given up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("alerts", sa.Column("dedup_key", sa.Text, nullable=True))
    op.add_column(
        "alerts",
        sa.Column("notifications", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
    )
    op.add_column("alerts", sa.Column("updated_at", TIMESTAMP, nullable=True))
    op.create_index("uq_alerts_dedup_key", "alerts", ["dedup_key"], unique=True)
    op.create_index("ix_alerts_currency_status", "alerts", ["currency", "status"])

    # One row per currency: the last tick the alert rules ran for (a repeated or concurrent
    # tick finds it and does nothing), and the failure streaks the stale rule needs.
    op.create_table(
        "alert_cursors",
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("observed_at", TIMESTAMP, nullable=True),
        sa.Column("state", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
        sa.PrimaryKeyConstraint("currency", name="pk_alert_cursors"),
    )

    # Notifications decided in the same transaction as the episodes they report, then
    # delivered with retries; `key` makes queuing the same notification twice impossible.
    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("observed_at", TIMESTAMP, nullable=False),
        sa.Column("dedup_keys", JSON_DOC, nullable=False),
        sa.Column("body", JSON_DOC, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("deliver_until", TIMESTAMP, nullable=False),
        sa.Column("claimed_until", TIMESTAMP, nullable=True),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notifications"),
        sa.UniqueConstraint("key", name="uq_alert_notifications_key"),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed')", name="ck_alert_notifications_status"
        ),
    )
    op.create_index(
        "ix_alert_notifications_status_next_attempt_at",
        "alert_notifications",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_alert_notifications_status_next_attempt_at", "alert_notifications")
    op.drop_table("alert_notifications")
    op.drop_table("alert_cursors")
    op.drop_index("ix_alerts_currency_status", "alerts")
    op.drop_index("uq_alerts_dedup_key", "alerts")
    op.drop_column("alerts", "updated_at")
    op.drop_column("alerts", "notifications")
    op.drop_column("alerts", "dedup_key")
