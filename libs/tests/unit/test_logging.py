"""Every log line is one JSON object, and a library's exception carries its traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from libs.infra.logging import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging binds handlers to this test's captured stderr: undo it after, so
    later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_a_library_exception_is_logged_with_its_real_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("unit")
    try:
        missing: dict[str, int] = {}
        missing["missing"]
    except KeyError:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=True)
    (line,) = _lines(capfd.readouterr().err)
    assert line["event"] == "Exception in ASGI application"
    assert "Traceback (most recent call last)" in str(line["exception"]) and "KeyError: 'missing'" in str(line["exception"])
    assert "exc_info" not in line


def test_our_own_exception_logs_carry_the_traceback_too(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("unit")
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger("t").exception("request_failed", path="/v0/x")
    (line,) = _lines(capfd.readouterr().err)
    assert line["event"] == "request_failed" and "ValueError: bad" in str(line["exception"])
