"""When a finished eval or adapter is young enough to reuse: timestamps as the stamps record them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def young(stamp_time: str | None, max_age_hours: float, now: datetime) -> bool:
    """Whether `stamp_time` (ISO 8601) lies at most `max_age_hours` before `now`; 0 hours: never."""
    if not stamp_time or max_age_hours <= 0:
        return False
    try:
        made = datetime.fromisoformat(stamp_time)
    except ValueError:
        return False
    return timedelta(0) <= now - made <= timedelta(hours=max_age_hours)
