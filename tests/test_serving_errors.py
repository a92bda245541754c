"""The server's last line of defence, without vLLM: an exception nobody foresaw becomes a 500 in
OpenAI's JSON error shape, without a traceback or the exception's text in the answer, and is
logged once. The engine here is deliberately broken (a real engine cannot be made to fail on
demand); the app, its middleware and its routes are the real ones."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ecgbatch.serving.server import MAX_JSON_DEPTH, RequestError, ServerConfig, build_app, parse_json  # noqa: E402


class BrokenEngine:
    served_name = "tiny"
    config = SimpleNamespace(grounded_prompt=False)   # what the service reads at start-up

    @property
    def model_names(self):
        raise RuntimeError("boom at /srv/secret/model")

    def shutdown(self):
        pass


def test_unexpected_exception_is_a_json_500_logged_once(caplog):
    app = build_app(ServerConfig(model_dir=Path(".")), engine_factory=BrokenEngine)
    with caplog.at_level(logging.ERROR, logger="ecgbatch.serving.server"), \
            TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/models")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    assert "boom" not in r.text and "/srv" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if rec.name == "ecgbatch.serving.server"]
    assert len(logged) == 1 and "boom" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("raw, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested"),
    (b'{"max_tokens": ' + b"9" * 5000 + b"}", "too long"),
    (b'{"text": "\\ud800"}', "unicode"),
    (b'{"\\udfff": 1}', "unicode"),
    (b"\xff{}", "utf-8"),
    (b'{"a": ', "not valid json"),
])
def test_parse_json_refuses_what_the_server_cannot_hold(raw, words):
    with pytest.raises(RequestError) as e:
        parse_json(raw)
    assert e.value.status == 400 and words in str(e.value).lower()


def test_parse_json_keeps_ordinary_bodies():
    body = {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "Grüße ✓"}]}]}
    import json

    assert parse_json(json.dumps(body, ensure_ascii=False).encode()) == body
    assert parse_json(b"") is None
