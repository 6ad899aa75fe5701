"""Assertions and broker access shared by the API tests."""

from __future__ import annotations

import json
import queue
from typing import Any


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape, with this status and code, as JSON."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def broker_messages(queue_name: str) -> list[Any]:
    """Every message waiting on `queue_name` in the memory broker, acked and removed."""
    from project.celery import app

    messages = []
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue_name)
        try:
            while True:
                try:
                    message = simple.get(block=False)
                except queue.Empty:
                    break
                message.ack()
                messages.append(message)
        finally:
            simple.close()
    return messages
