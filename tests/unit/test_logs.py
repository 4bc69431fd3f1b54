from __future__ import annotations

import json
import logging

from tipml.logs import JsonFormatter, request_id_var


def test_json_log_lines_carry_request_id_and_extras() -> None:
    record = logging.LogRecord(
        "tipml.test", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    record.reason = "deadline"
    token = request_id_var.set("rid-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    data = json.loads(line)
    assert data["msg"] == "hello you"
    assert data["level"] == "warning"
    assert data["request_id"] == "rid-1"
    assert data["reason"] == "deadline"
    assert data["ts"].endswith("Z")
    assert "request_id" not in json.loads(JsonFormatter().format(record))
