"""How the console writes times, ages and money (Jinja filters): times in UTC, said so;
ages in words; money exact, with its currency (Decimal, never a float)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jinja2


def when(moment: float | None) -> str:
    if moment is None:
        return "–"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def day(moment: float | None) -> str:
    return "" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def age(seconds: float | None) -> str:
    """A duration in words, to the minute (seconds under two minutes)."""
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days {hours % 24} h"


def ago(moment: float | None) -> str:
    if moment is None:
        return "–"
    return f"{age(time.time() - moment)} ago"


def money(amount: Decimal | None, currency: str | None = None) -> str:
    """'1,234.50 USD', '4,900 JPY', '12.345 KWD': every digit recorded, none invented."""
    if amount is None:
        return "–"
    text = format(amount, ",f")
    return f"{text} {currency}" if currency else text


def duration_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def answer(text: str | None, status_code: int | None = None) -> str:
    """A destination's answer with its HTTP status, said once ("HTTP 401: …")."""
    text = text or ""
    if status_code is None or text.startswith("HTTP "):
        return text or "–"
    return f"HTTP {status_code}: {text}" if text else f"HTTP {status_code}"


def sentence(text: str) -> str:
    """The first letter in upper case, the rest as written (`capitalize` lowers it)."""
    return text[:1].upper() + text[1:]


def install(env: jinja2.Environment) -> None:
    filters: dict[str, Any] = {
        "when": when,
        "day": day,
        "age": age,
        "ago": ago,
        "money": money,
        "ms": duration_ms,
        "answer": answer,
        "sentence": sentence,
    }
    env.filters.update(filters)
