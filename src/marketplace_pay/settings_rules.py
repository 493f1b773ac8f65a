"""Rules a setting's value must keep beyond its type: a JWT secret nobody could guess, a cron
schedule that parses."""

from __future__ import annotations

import re


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used."""


def check_cron(expression: str, source: str) -> None:
    """A schedule is a 5-field cron expression (minute hour day month weekday), read as UTC."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise SettingsError(
            f"{source} must be a 5-field cron expression, e.g. '0 6 * * *'; got {expression!r}: {exc}"
        ) from None


JWT_SECRET_BYTES_MIN = 32
# Template text ("change-me-to-a-long-random-secret…") and secrets made of nothing but such
# words and digits ("secret-secret-1234…", "test-secret-0123456789…").
_PLACEHOLDER = re.compile(r"change.?me|placeholder|example|replace.?me|your.?secret|insert.?here", re.IGNORECASE)
_PLACEHOLDER_WORDS = re.compile(r"(?:secret|password|passwd|jwt|key|token|test|dev|default|[0-9])+")
GENERATE_SECRET_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


def check_jwt_secret(secret: str, source: str = "MP_JWT_SECRET") -> None:
    """Refuse HS256 secrets that anyone could guess: whoever knows the secret can mint tokens
    with any role."""
    if len(secret.encode("utf-8", "surrogatepass")) < JWT_SECRET_BYTES_MIN:
        raise SettingsError(f"{source} must be at least {JWT_SECRET_BYTES_MIN} bytes; {GENERATE_SECRET_HINT}")
    letters = re.sub(r"[^a-z0-9]", "", secret.lower())
    if _PLACEHOLDER.search(secret) or _PLACEHOLDER_WORDS.fullmatch(letters) or len(set(secret)) < 8:
        raise SettingsError(f"{source} looks like a placeholder, not a secret; {GENERATE_SECRET_HINT}")
