"""`ecgbatch serve` through the official `openai` client on loopback: inline and path ECGs,
streaming, an adapter by name, multi-turn token ids, and the refusals (4xx, never 500). One
server process (conftest's ``ecg_server``) serves every test."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from ecgbatch._paths import REPO_ROOT

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.vllm, pytest.mark.shared, pytest.mark.slow]

RECORD = "cinc2021/A0689.hea"
QUESTION = "Please describe this ECG."


@pytest.fixture(scope="module")
def client(ecg_server):
    return openai.OpenAI(base_url=ecg_server["url"] + "/v1", api_key=ecg_server["key"], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def record():
    from ecgbatch.io import read_record

    return read_record(str(REPO_ROOT / "sample_archive" / RECORD))


def inline(rec, order=None):
    from ecgbatch.serving.server_upload import inline_spec

    spec = inline_spec(rec)
    if order is not None:
        x = np.asarray(rec.signal, dtype="<f4")[order]
        spec.update(data=base64.b64encode(x.tobytes()).decode(), leads=[rec.leads[i] for i in order])
    return spec


def ask(client, ecg, model="tiny", question=QUESTION, max_tokens=8, **kw):
    return client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": [{"type": "ecg", "ecg": ecg}, {"type": "text", "text": question}]}],
        **kw)


def test_models_lists_base_and_adapter(client):
    assert sorted(m.id for m in client.models.list().data) == ["ecg-chat", "tiny"]


def test_inline_and_path_give_the_same_answer(client, record):
    a = ask(client, inline(record))
    text = a.choices[0].message.content
    assert text.strip() and a.usage.completion_tokens == 8 and a.choices[0].finish_reason == "length"
    assert a.usage.prompt_tokens == 145          # report's prompt: 45 ids - 1 placeholder + 101 ECG tokens
    grounds = a.model_extra["ecgbatch"]          # not grounded (the fixture's config), computed anyway
    assert grounds["grounded"] is False and isinstance(grounds["contradictions"], list)
    by = {f["label"]: f for f in grounds["findings"]}
    assert by["heart_rate"]["source"] == "measurement" and 40 < by["heart_rate"]["value"] < 150
    assert ask(client, {"path": RECORD}).choices[0].message.content == text
    # the leads are mapped by name: another order of the same samples is the same model input
    order = list(range(12))[::-1]
    assert ask(client, inline(record, order)).choices[0].message.content == text
    # a different ECG gives a different answer
    other = ask(client, {"path": "ptbxl/raw/00001_lr.hea"}).choices[0].message.content
    assert other != text


def test_streaming_matches_the_whole_answer(client, record):
    whole_answer = ask(client, {"path": RECORD}, max_tokens=12)
    whole, whole_grounds = whole_answer.choices[0].message.content, whole_answer.model_extra["ecgbatch"]
    chunks = list(ask(client, {"path": RECORD}, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    # pieces, not a count of them: vLLM merges the DELTA outputs a busy server loop has not taken yet
    # (RequestOutputCollector), so on a loaded machine all 12 tokens came as one piece (session 17)
    assert pieces and "".join(pieces) == whole
    assert chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # the finishing chunk (only it) carries the ecgbatch field, as the whole answer's
    extra = [c.model_extra.get("ecgbatch") for c in chunks]
    finishing = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason]
    assert [i for i, e in enumerate(extra) if e is not None] == finishing
    assert extra[finishing[0]]["findings"] == whole_grounds["findings"]


def test_adapter_by_name_changes_the_answer(client):
    base = ask(client, {"path": RECORD}, max_tokens=16).choices[0].message.content
    tuned = ask(client, {"path": RECORD}, model="ecg-chat", max_tokens=16)
    assert tuned.model == "ecg-chat" and tuned.choices[0].message.content != base


def test_multi_turn_uses_the_shared_prompt_ids(client, llava_converted):
    from ecgbatch.llava.loading import load_tokenizer, read_config
    from ecgbatch.llava.prompting import prompt_ids

    history = [(QUESTION, "Sinus rhythm."), ("Is the axis normal?", "Yes.")]
    msgs = [{"role": "user", "content": [{"type": "ecg", "ecg": {"path": RECORD}}, {"type": "text", "text": history[0][0]}]},
            {"role": "assistant", "content": history[0][1]},
            {"role": "user", "content": history[1][0]}, {"role": "assistant", "content": history[1][1]},
            {"role": "user", "content": "What is the heart rate?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=4, temperature=0)
    config = read_config(llava_converted)
    ids = prompt_ids(load_tokenizer(llava_converted, config), "What is the heart rate?", config, history)
    assert r.usage.prompt_tokens == len(ids) - 1 + 101


def _status(fn):
    with pytest.raises(openai.APIStatusError) as e:
        fn()
    return e.value.status_code, str(e.value)


@pytest.mark.parametrize("ecg, status, words", [
    ({"path": "../pyproject.toml"}, 403, "outside"),
    ({"path": "/etc/passwd"}, 403, "outside"),
    ({"path": "cinc2021/nope.hea"}, 404, "no such record"),
    ({"path": "bad/garbage.hea"}, 422, "cannot be read"),
    ({"path": "bad/single_lead.hea"}, 422, "missing"),
    ({"data": "!!notbase64", "fs": 500, "leads": ["I"]}, 400, "base64"),
    ({"data": base64.b64encode(np.zeros(7, "<f4").tobytes()).decode(), "fs": 500, "leads": ["I", "II"]}, 400, "float32"),
    ({"data": "AAAA", "fs": -1, "leads": ["I"]}, 400, "fs"),
    ({"path": RECORD, "data": "AAAA"}, 400, "exactly one"),
])
def test_bad_ecgs_are_refused(client, ecg, status, words):
    code, msg = _status(lambda: ask(client, ecg))
    assert code == status and words in msg.lower()


def test_other_refusals(client, ecg_server, record):
    part = {"type": "ecg", "ecg": {"path": RECORD}}
    user = lambda *c: {"role": "user", "content": list(c)}
    text = {"type": "text", "text": QUESTION}
    cases = [
        (lambda: ask(client, {"path": RECORD}, model="nope"), 404, "not served"),
        (lambda: ask(client, {"path": RECORD}, max_tokens=10_000), 400, "max_tokens"),
        (lambda: client.chat.completions.create(model="tiny", messages=[user(part, part, text)]), 400, "ecg per"),
        (lambda: client.chat.completions.create(model="tiny", messages=[user(text)]), 400, "no ecg"),
        (lambda: client.chat.completions.create(model="tiny", messages=[user(part, {"type": "text", "text": "<ecg> hi"})]),
         400, "placeholder"),
        (lambda: client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "x"}, user(part, text)]),
         400, "system"),
        (lambda: client.chat.completions.create(model="tiny", messages=[user(part, {"type": "image_url", "image_url": {"url": "x"}})]),
         400, "unsupported content part"),
        (lambda: ask(client, inline(record) | {"data": "A" * (3 << 20)}), 413, "limit"),
    ]
    for fn, status, words in cases:
        code, msg = _status(fn)
        assert (code, words in msg.lower()) == (status, True), msg
    # the API key is enforced; the page itself needs none
    bad = openai.OpenAI(base_url=ecg_server["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(ecg_server["url"] + "/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": "Bearer test-key"})
    assert r.status_code == 400 and "json" in r.json()["error"]["message"].lower()
    assert httpx.get(ecg_server["url"] + "/").status_code == 200
    # and the server is still answering
    assert ask(client, {"path": RECORD}, max_tokens=2).usage.completion_tokens == 2
    assert "Traceback" not in ecg_server["log"].read_text()
