"""How the daemon's log lines look: for a terminal, for the journal, or as JSON for log shippers."""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("auto", "text", "journal", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# syslog priorities, which the journal reads from a `<N>` prefix (sd-daemon(3)).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`, without a time (the journal records its own). A traceback stays
    part of its event: each of its lines carries the event's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (Unix seconds), level, logger, message, and a traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def resolve(fmt: str, journal: bool) -> str:
    """`auto` is `journal` when standard error goes to the journal, `text` otherwise."""
    if fmt == "auto":
        return "journal" if journal else "text"
    return fmt


def configure(level: str, fmt: str) -> None:
    """Send the process's log to standard error in format `fmt` (text, journal or json)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "journal":
        handler.setFormatter(JournalFormatter())
    elif fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(_TEXT)
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
