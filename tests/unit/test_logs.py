"""Log formats: the JSON formatter, the text formatter, context fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.logs import (
    JsonFormatter,
    TextFormatter,
    bind_request_id,
    current_request_id,
    log_context,
    make_formatter,
    make_handler,
    reset_context,
)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A private logger writing JSON lines to a string (the root's handlers stay out of it)."""
    out = io.StringIO()
    handler = make_handler(out, "json")
    lg = logging.getLogger("memserve.test-logs")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    yield lg, out, handler
    lg.handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_has_the_standard_fields_and_the_extras(logger) -> None:
    lg, out, _ = logger
    lg.info("ran %d jobs", 3, extra={"job": "j1", "deliveries": 2, "weird": object()})
    (line,) = lines(out)
    assert line["message"] == "ran 3 jobs" and line["level"] == "INFO" and line["logger"] == lg.name
    assert isinstance(line["process"], int)
    assert line["job"] == "j1" and line["deliveries"] == 2
    assert str(line["weird"]).startswith("<object object")  # unserialisable: its str, never an error
    assert str(line["time"]).endswith("Z") and len(str(line["time"])) == len("2024-01-01T00:00:00.000Z")
    assert "request_id" not in line


def test_a_traceback_and_a_multi_line_message_stay_on_one_line(logger) -> None:
    lg, out, _ = logger
    try:
        raise ValueError("boom")
    except ValueError:
        lg.exception("first\nsecond")
    assert len(out.getvalue().splitlines()) == 1
    (line,) = lines(out)
    assert line["message"] == "first\nsecond" and line["level"] == "ERROR"
    assert "Traceback" in str(line["exc_info"]) and "ValueError: boom" in str(line["exc_info"])


def test_the_request_id_of_the_context_is_on_every_line(logger) -> None:
    lg, out, _ = logger
    token = bind_request_id("req-7")
    try:
        assert current_request_id() == "req-7"
        lg.info("inside")
        lg.info("explicit", extra={"request_id": "other"})  # an explicit extra wins
    finally:
        reset_context(token)
    lg.info("outside")
    inside, explicit, outside = lines(out)
    assert inside["request_id"] == "req-7" and explicit["request_id"] == "other"
    assert "request_id" not in outside and current_request_id() == ""


def test_context_fields_are_lazy_and_nest(logger) -> None:
    lg, out, handler = logger
    calls = []

    def ids() -> list[str]:
        calls.append(1)
        return ["a", "b"]

    handler.setLevel(logging.INFO)
    with log_context(request_ids=ids), log_context(batch=4):
        lg.debug("below the handler's level: the field is never computed")
        assert calls == []
        lg.info("emitted")
    lg.info("after")
    emitted, after = lines(out)
    assert emitted["request_ids"] == ["a", "b"] and emitted["batch"] == 4 and calls == [1]
    assert "batch" not in after and "request_ids" not in after


def test_the_text_format_appends_extras_as_key_value() -> None:
    record = logging.makeLogRecord(
        {"name": "memserve.api", "levelno": 20, "levelname": "INFO", "msg": "done", "request_id": "r-1",
         "path": "/a b", "request_ids": ["r-2", "r-3"]}
    )  # fmt: skip
    text = TextFormatter().format(record)
    assert text.endswith('memserve.api: done request_id=r-1 path="/a b" request_ids=r-2,r-3')
    assert " INFO [" in text


def test_uvicorns_colour_copy_is_left_out() -> None:
    record = logging.makeLogRecord({"msg": "started", "color_message": "\x1b[1mstarted\x1b[0m"})
    assert "color_message" not in json.loads(JsonFormatter().format(record))


def test_an_unknown_format_is_refused() -> None:
    assert isinstance(make_formatter("json"), JsonFormatter)
    assert isinstance(make_formatter("text"), TextFormatter)
    with pytest.raises(ValueError, match="text or json"):
        make_formatter("xml")
