"""Chat requests with ECG parts, checked without an engine: conversations -> (question, history),
inline ECGs (any lead order and rate) -> the model input `report` builds from the file, paths
confined to the ECG folder, uploads that may not point outside themselves."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from ecgbatch._paths import REPO_ROOT
from ecgbatch.serving.chat_request import Limits, RequestError, model_input, parse_chat_request
from ecgbatch.serving.server_upload import inline_spec, preview

ARCHIVE = REPO_ROOT / "sample_archive"
PART = {"type": "ecg", "ecg": {"path": "cinc2021/A0689.hea"}}


def body(*messages, **kw):
    return {"model": "m", "messages": list(messages), **kw}


def test_conversation_becomes_question_and_history():
    job = parse_chat_request(body({"role": "user", "content": [PART, {"type": "text", "text": "Describe."}]},
                                  {"role": "assistant", "content": "Sinus."},
                                  {"role": "user", "content": "Rate?"}, max_tokens=7, stream=True),
                             "<ecg>", Limits())
    assert (job.question, job.history, job.ecg_part) == ("Rate?", [("Describe.", "Sinus.")], PART["ecg"])
    assert job.sampling.max_tokens == 7 and job.stream and job.sampling.temperature == 0.0
    assert job.sampling.repetition_penalty is None      # the model's own default
    rp = parse_chat_request(body({"role": "user", "content": [PART, {"type": "text", "text": "q"}]},
                                 repetition_penalty=1.3), "<ecg>", Limits())
    assert rp.sampling.repetition_penalty == 1.3


@pytest.mark.parametrize("messages, words", [
    ([{"role": "assistant", "content": "x"}], "expected a user"),
    ([{"role": "user", "content": [PART, {"type": "text", "text": "a"}]}, {"role": "assistant", "content": "b"}], "last message"),
    ([{"role": "user", "content": [PART, PART, {"type": "text", "text": "a"}]}], "ecg per"),
    ([{"role": "user", "content": "no ecg"}], "no ecg"),
    ([{"role": "user", "content": [PART]}], "no text"),
    ([{"role": "user", "content": [PART, {"type": "text", "text": "<ecg>"}]}], "placeholder"),
    ([{"role": "tool", "content": "x"}], "not supported"),
    ("hello", "non-empty list"),
])
def test_bad_conversations(messages, words):
    with pytest.raises(RequestError) as e:
        parse_chat_request(body(*messages) if isinstance(messages, list) else {"model": "m", "messages": messages},
                           "<ecg>", Limits())
    assert e.value.status == 400 and words in str(e.value).lower()


@pytest.mark.parametrize("extra, words", [({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 5000}, "max_tokens"),
                                          ({"temperature": "hot"}, "temperature"), ({"n": 2}, "'n'"),
                                          ({"stop": [1]}, "stop"), ({"repetition_penalty": 0}, "repetition_penalty"),
                                          ({"repetition_penalty": "x"}, "repetition_penalty")])
def test_bad_sampling(extra, words):
    with pytest.raises(RequestError) as e:
        parse_chat_request(body({"role": "user", "content": [PART, {"type": "text", "text": "q"}]}, **extra),
                           "<ecg>", Limits())
    assert words in str(e.value)


@pytest.fixture(scope="module")
def config(llava_converted):
    from ecgbatch.llava.loading import read_config

    return read_config(llava_converted)


@pytest.mark.shared
def test_inline_any_order_equals_the_file(config):
    from ecgbatch.io import read_record
    from ecgbatch.llava.inputs import preprocess_for_model

    rec = read_record(str(ARCHIVE / "cinc2021/A0689.hea"))
    ref = preprocess_for_model(rec, config)
    spec = inline_spec(rec)
    order = np.random.default_rng(0).permutation(12)
    x = np.asarray(rec.signal, "<f4")[order]
    shuffled = dict(spec, data=base64.b64encode(x.tobytes()).decode(), leads=[rec.leads[i].lower() for i in order])
    np.testing.assert_array_equal(model_input(shuffled, config, None, Limits()), ref)
    np.testing.assert_array_equal(model_input({"path": "cinc2021/A0689.hea"}, config, ARCHIVE, Limits()), ref)
    missing = dict(spec, data=base64.b64encode(np.asarray(rec.signal[:6], "<f4").tobytes()).decode(), leads=list(rec.leads[:6]))
    with pytest.raises(RequestError) as e:
        model_input(missing, config, None, Limits())
    assert e.value.status == 422 and "missing" in str(e.value).lower()


@pytest.mark.shared
def test_paths_stay_inside_the_ecg_folder(config, tmp_path):
    (tmp_path / "link.hea").symlink_to(ARCHIVE / "cinc2021/A0689.hea")
    cases = [("../pyproject.toml", ARCHIVE, 403), ("/etc/passwd", ARCHIVE, 403), ("link.hea", tmp_path / "sub", 403),
             ("cinc2021/A0689.hea", None, 403), ("nope.hea", ARCHIVE, 404)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link.hea").symlink_to(ARCHIVE / "cinc2021/A0689.hea")
    for path, root, status in cases:
        with pytest.raises(RequestError) as e:
            model_input({"path": path}, config, root, Limits())
        assert e.value.status == status, (path, str(e.value))
        assert str(REPO_ROOT) not in str(e.value)


def test_upload_preview_and_its_refusals():
    hea, dat = (ARCHIVE / "cinc2021/A0689.hea"), (ARCHIVE / "cinc2021/A0689.mat")
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in (hea, dat)]
    out = preview({"files": files}, Limits())
    assert out["summary"]["fs"] == 500 and len(out["summary"]["leads"]) == 12
    assert base64.b64decode(out["plot_png"])[:4] == b"\x89PNG"
    assert len(base64.b64decode(out["ecg"]["data"])) == 12 * 5000 * 4
    json.dumps(out)
    evil = hea.read_text().replace("A0689.mat", "../../../etc/passwd", 1).encode()
    for bad, status in [([files[0]], 422),                                   # header without its signal file
                        ([{"name": "A0689.hea", "data": base64.b64encode(evil).decode()}], 422),
                        ([{"name": "../x.hea", "data": ""}], 400),
                        ([{"name": "x.txt", "data": "aGk="}], 422)]:
        with pytest.raises(RequestError) as e:
            preview({"files": bad}, Limits())
        assert e.value.status == status, str(e.value)
