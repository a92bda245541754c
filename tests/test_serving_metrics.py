"""`ecgbatch serve`'s GET /metrics as an operator scrapes it: one real chat through the official
`openai` client between two scrapes, parsed with prometheus_client's own text parser; the
counters moved by exactly that request, vLLM's engine statistics are there, and /metrics needs the
API key like /v1. The session's one server (conftest's ``ecg_server``)."""
from __future__ import annotations

import time

import httpx
import pytest

openai = pytest.importorskip("openai")
parser = pytest.importorskip("prometheus_client.parser")
pytestmark = [pytest.mark.vllm, pytest.mark.shared, pytest.mark.slow]

CHAT = "/v1/chat/completions"


def scrape(server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one authenticated scrape."""
    r = httpx.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {server['key']}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in parser.text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def vllm_generation_tokens(samples) -> float:
    return sum(v for (n, _), v in samples.items() if n == "vllm:generation_tokens_total")


def test_a_chat_moves_the_counters_and_metrics_need_the_key(ecg_server):
    before = scrape(ecg_server)
    client = openai.OpenAI(base_url=ecg_server["url"] + "/v1", api_key=ecg_server["key"], max_retries=0, timeout=120)
    a = client.chat.completions.create(model="tiny", max_tokens=4, temperature=0, messages=[{"role": "user", "content": [
        {"type": "ecg", "ecg": {"path": "cinc2021/A0689.hea"}}, {"type": "text", "text": "Please describe this ECG."}]}])
    assert a.usage.completion_tokens == 4
    deadline = time.time() + 20      # vLLM records an iteration's stats just after it hands out the output
    while True:
        after = scrape(ecg_server)
        if vllm_generation_tokens(after) - vllm_generation_tokens(before) >= 4 or time.time() > deadline:
            break
        time.sleep(0.5)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ecgbatch_http_requests_total", route=CHAT, status="200") == 1
    assert moved("ecgbatch_http_request_duration_seconds_count", route=CHAT) == 1
    assert moved("ecgbatch_http_requests_total", route="/metrics", status="200") >= 1   # the first scrape
    assert moved("ecgbatch_completion_tokens_total", model="tiny") == 4
    assert moved("ecgbatch_prompt_tokens_total", model="tiny") == a.usage.prompt_tokens > 100   # ECG tokens in
    for stage in ("read", "preprocess", "grounding"):
        assert moved("ecgbatch_ecg_input_seconds_count", stage=stage) == 1, stage
    assert moved("ecgbatch_ecg_input_seconds_sum", stage="read") > 0
    assert value(after, "ecgbatch_requests_in_flight") == 0 and value(after, "ecgbatch_requests_queued") == 0
    # vLLM's own engine statistics, from its stat logger attached to our AsyncLLM
    assert vllm_generation_tokens(after) - vllm_generation_tokens(before) >= 4
    assert any(n == "vllm:num_requests_waiting" for n, _ in after)

    # the key is required, and a refused scrape is counted as one
    assert httpx.get(ecg_server["url"] + "/metrics", timeout=30).status_code == 401
    wrong = httpx.get(ecg_server["url"] + "/metrics", headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert wrong.status_code == 401 and "error" in wrong.json()
    assert value(scrape(ecg_server), "ecgbatch_http_requests_total", route="/metrics", status="401") \
        - value(after, "ecgbatch_http_requests_total", route="/metrics", status="401") == 2
