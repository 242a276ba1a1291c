"""luxor-etl runtime: settings, the Luxor client, cache, alerts, exporter and the CLI."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `celery -A worker …` looks up `worker.app`; load Celery only when it is asked for.
    if name in ("app", "celery"):
        from worker.celery_app import app

        return app
    raise AttributeError(name)
