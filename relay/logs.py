"""Logging setup. Log lines carry ids, destinations and outcomes — never an email,
a secret or a payload; `RedactingFilter` is the last line of defence.

Every record is one line: `Formatter` escapes CR, LF and the other control and
line-break characters in the message (a payload value such as a Lemon Squeezy
`data.id` with CR/LF in it cannot forge log lines), and indents the lines of a
traceback so none of them can pass for a record of its own. It sits at the
handler, so it covers every present and future log call, relay's and uvicorn's.
"""

from __future__ import annotations

import logging
import sys

from relay.destinations import redact

# C0 controls, DEL, and what str.splitlines() breaks on beyond them (NEL, LS, PS).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """`text` on one line: control and line-break characters as backslash escapes."""
    return text if text.isprintable() else text.translate(_ESCAPES)


def short(value: object, limit: int = 100) -> str:
    """An id from a payload, cut to `limit` characters for a log line (escaped by the
    formatter anyway; this keeps a hostile 1 MB id from filling the log)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Formatter(logging.Formatter):
    """A logging.Formatter whose records are each one line (plus an indented traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                line += "".join(f"\n    | {escape(part)}" for part in block.splitlines())
        return line


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
