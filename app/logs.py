"""Logging set-up shared by the API, the workers and the CLI.

Two line formats, chosen by ``MEMSERVE_LOG_FORMAT``:

- ``text`` (default): ``time LEVEL [pid] logger: message key=value ...``, for people at a terminal.
- ``json``: one JSON object per line with ``time`` (ISO 8601, UTC, milliseconds), ``level``,
  ``logger``, ``message``, ``process``, then every extra of the record (``request_id``, ``job``,
  ...) and ``exc_info`` (the traceback) when there is one: what log shippers (Loki, Elastic,
  CloudWatch) parse without a grok pattern.

Context fields: `bind_request_id` (the API, per request) and `log_context` (the worker, per
batch) put fields in a context variable; a filter on the handler copies them onto every
record logged in that context, so ``log.info("...")`` deep inside a request carries the
request's id without passing it around. A context value may be a callable: it is called only
when a record is actually emitted (the worker's request ids of a batch cost nothing unless a
line is logged).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

_context: ContextVar[Mapping[str, Any]] = ContextVar("memserve_log_context", default={})  # noqa: B039

# Attributes every LogRecord has: whatever else a record carries came from `extra=` or the context.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}
_TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def bind_request_id(request_id: str) -> Token[Mapping[str, Any]]:
    """Make `request_id` part of every log line of the current context (an API request)."""
    return _context.set({**_context.get(), "request_id": request_id})


def reset_context(token: Token[Mapping[str, Any]]) -> None:
    """Undo a `bind_request_id`."""
    _context.reset(token)


def current_request_id() -> str:
    """The id of the request being handled in this context, or ""."""
    rid = _context.get().get("request_id", "")
    return rid if isinstance(rid, str) else ""


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` (values, or callables evaluated when a line is emitted) to every log line
    of the block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record (an explicit `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if key not in record.__dict__:
                setattr(record, key, value() if callable(value) else value)
        return True


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of `record` beyond the standard ones: `extra=` arguments and context fields."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on an unserialisable extra (it becomes its str)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in record_extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        # json escapes newlines, so a traceback or a multi-line message stays on one line.
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The classic line, with the record's extras appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = record_extras(record)
        if not extras:
            return line
        return line + " " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())


def _text_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in "\"'=" for c in text) else text


def make_formatter(fmt: LogFormat | str) -> logging.Formatter:
    """The formatter of a ``MEMSERVE_LOG_FORMAT`` value."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {fmt!r}: use text or json")


def make_handler(stream: TextIO, fmt: LogFormat | str = "text") -> logging.Handler:
    """A stream handler in format `fmt` that adds the context fields to every record."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    handler._memserve = True  # type: ignore[attr-defined]
    return handler


def _our_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_memserve", False)), None)


def setup_logging(level: str = "INFO", fmt: LogFormat | str = "text") -> None:
    """One line per record on stderr, in `fmt`, with the process id (API and workers interleave).

    Calling it again changes the level and the format of the handler installed the first time.
    """
    root = logging.getLogger()
    handler = _our_handler()
    if handler is None:
        root.handlers[:] = [make_handler(sys.stderr, fmt)]
    else:
        handler.setFormatter(make_formatter(fmt))
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings become log lines too, in the same format


def use_log_format(fmt: LogFormat | str, loggers: tuple[str, ...] = ("uvicorn",)) -> None:
    """Switch the handler `setup_logging` installed to `fmt`; a no-op where it was never called
    (an app embedded in tests or another program keeps its host's logging).

    With ``json``, `loggers` (uvicorn's, which its default logging config gives a handler of its
    own) are sent to that handler too, so that the server's lines are JSON as well. (Not
    ``uvicorn.access``: uvicorn switches its access log off by leaving it without handlers, and
    memserve's own, ``MEMSERVE_ACCESS_LOG``, names the route and the request id.)
    """
    handler = _our_handler()
    if handler is None:
        return
    handler.setFormatter(make_formatter(fmt))
    if fmt == "json":
        for name in loggers:
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True
