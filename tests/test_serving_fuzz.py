"""A bounded property-based fuzz of `ecgbatch serve`'s HTTP API (hypothesis): JSON bodies drawn
from the shape of an OpenAI chat request (every field also replaced by any JSON value, text with
any Unicode including lone surrogates, paths with ../, links, long names) and arbitrary JSON or
bytes for /v1/chat/completions and /v1/ecg/preview. Whatever comes in, the answer is never a 5xx,
every error is OpenAI-shaped JSON, and the server still answers afterwards. Bounded: 120 chat
and 60 preview examples, max_tokens <= 2 (a valid draw costs one short generation)."""
from __future__ import annotations

import base64
import json

import httpx
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.shared, pytest.mark.slow]

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
paths = st.sampled_from(["cinc2021/A0689.hea", "cinc2021/A0689", "cinc2021/A0689.mat", "../pyproject.toml",
                         "/etc/passwd", "bad/garbage.hea", "hostile/link2", "x" * 300, "", ".", "cinc2021/",
                         "cinc2021/A0689.hea#3", "ptbxl/raw/00001_lr"]) | st.text(max_size=40)
inline = st.fixed_dictionaries({
    "data": st.sampled_from(["", "AAAA", "!!", base64.b64encode(bytes(48)).decode()]) | st.text(max_size=12),
    "fs": st.sampled_from([500, 0, -1, 1e308, "500"]) | json_values,
    "leads": st.sampled_from([["I"], ["I", "II", "III"], [], "I"]) | json_values})
ecg = st.one_of(st.fixed_dictionaries({"path": paths}), inline, json_values)
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("ecg"), "ecg": ecg}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30) | st.sampled_from(["\ud800", "<ecg>"])}),
    json_values)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 5]),
                                 "content": st.lists(part, max_size=3) | st.text(max_size=10) | json_values})
chat = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny", "ecg-chat", "nope", ""]) | json_values,
     "messages": st.lists(message, min_size=0, max_size=3) | json_values},
    optional={"max_tokens": st.integers(-5, 2) | st.integers() | json_values,
              "temperature": st.floats() | json_values, "top_p": st.floats() | json_values,
              "seed": st.integers() | json_values, "stop": json_values, "n": json_values,
              "stream": st.booleans() | json_values, "stream_options": json_values})
upload = st.fixed_dictionaries({"files": st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["a.hea", "a.dat", "a.npy", "a.h5", "a.mat", "a.xml", "../a.hea", "a"]) | st.text(max_size=12),
    "data": st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()) | json_values}), max_size=3)
    | json_values})


@pytest.fixture(scope="module")
def client(ecg_server):
    with httpx.Client(base_url=ecg_server["url"], timeout=120,
                      headers={"Authorization": f"Bearer {ecg_server['key']}"}) as c:
        yield c


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["type"] and err["code"], r.text[:300]


def _send(client, route: str, body) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(route, content=raw, headers={"Content-Type": "application/json"})


def test_fuzz_chat_completions(client):
    @FUZZ
    @given(body=chat | json_values | st.binary(max_size=64))
    def run(body):
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 2:
            body["max_tokens"] = 2           # bound the cost of a draw that is a valid request
        if isinstance(body, dict) and "max_tokens" not in body:
            body["max_tokens"] = 1
        _check(_send(client, "/v1/chat/completions", body))

    run()
    assert client.get("/health").status_code == 200


def test_fuzz_ecg_preview(client):
    @settings(FUZZ, max_examples=60)
    @given(body=upload | json_values | st.binary(max_size=64))
    def run(body):
        _check(_send(client, "/v1/ecg/preview", body))

    run()
    assert client.get("/health").status_code == 200
