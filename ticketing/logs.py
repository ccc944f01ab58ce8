"""Logging: readable text by default, one JSON object per line with TICKETING_LOG_FORMAT=json.

A record's extras (the access log's request_id, operation, outcome, duration_ms, customer)
become fields of its JSON object. Nothing here logs a token: the access log names the
customer (the token's subject) only. With tracing on (ticketing/tracing.py), a record written
while a span is current carries its trace_id and span_id: JSON fields, or at the end of a
text line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ticketing.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The attributes every LogRecord has: anything else on a record was passed as `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Set by ticketing.tracing once tracing is on: the current span's trace and span ids (hex),
# or None outside a span. Records are formatted in the thread, and so the context, that
# wrote them.
trace_ids: Callable[[], tuple[str, str] | None] | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if trace_ids is not None and (ids := trace_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The line itself, before any traceback.
        line = super().formatMessage(record)
        if trace_ids is not None and (ids := trace_ids()) is not None:
            return f"{line} trace_id={ids[0]} span_id={ids[1]}"
        return line


def formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


def configure(settings: Settings) -> None:
    """The root logger's handler, unless one is set already (by a test, or an embedding
    application)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(settings))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's own loggers (startup, errors, its access log): its default text, or JSON."""
    from uvicorn.config import LOGGING_CONFIG

    if settings.log_format != "json":
        return LOGGING_CONFIG
    config: dict[str, Any] = json.loads(json.dumps(LOGGING_CONFIG))  # a deep copy
    for name in config["formatters"]:
        config["formatters"][name] = {"()": f"{__name__}.JsonFormatter"}
    return config


class Outage:
    """A failure that repeats on every retry, reported once: a warning when it starts and a
    line when it ends, so that a database outage doesn't write a warning every 0.25 s."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger, self._what = logger, what
        self.ongoing = False

    def failed(self, error: BaseException) -> None:
        if self.ongoing:
            self._logger.debug("%s still failing: %s", self._what, error)
            return
        self.ongoing = True
        self._logger.warning("%s failed (retrying, quietly until it works): %s", self._what, error)

    def succeeded(self) -> None:
        if self.ongoing:
            self.ongoing = False
            self._logger.info("%s works again", self._what)
