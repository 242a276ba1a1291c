"""The project's error hierarchy; the CLI maps these to exit codes and one-line messages."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one bounded log line (a database error's driver message if it has one)."""
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split())[:limit]


class LuxorEtlError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(LuxorEtlError):
    """A setting is missing or invalid (exit code 2)."""


class LuxorError(LuxorEtlError):
    """Talking to the Luxor API did not give a usable answer."""


class LuxorAuthError(LuxorError):
    """The API refused the key (401/403): retrying will not help."""


class LuxorUnavailable(LuxorError):
    """Rate limits, server errors or network failures outlasted the retries."""


class LuxorBadResponse(LuxorError):
    """The API answered, but with something we cannot trust (bad JSON, schema, pagination)."""


class LuxorRequestRejected(LuxorError):
    """The API rejected our parameters (400)."""


class StoreUnavailable(LuxorEtlError):
    """PostgreSQL could not be reached or refused the write."""


class CacheUnavailable(LuxorEtlError):
    """Redis could not be reached."""
