"""`ecgbatch chat`: a real chat through vLLM driven by a piped stdin (summary and plot first,
two turns with the history kept, /plot, /save, /reset), its first answer equal to the server's
for the same ECG, question and adapter; unreadable records refused before any engine starts.

The chat process runs with --verbose, the one generative command process of the suite that does:
vLLM's own warnings get through (the quiet run that drops them: test_diagnosis_prompt's
`report RECORD --ddp` process) and the exit is clean either way."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.quiet import NOISE, UNCLEAN_EXIT

from ecgbatch._paths import REPO_ROOT

RECORD = "sample_archive/cinc2021/A0689.hea"


def _chat(args, stdin: str, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VLLM_CPU_KVCACHE_SPACE="1", ECGBATCH_CACHE=str(cwd))
    return subprocess.run([sys.executable, "-m", "ecgbatch.cli", "chat", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.shared
def test_unreadable_record_is_refused(llava_converted, tmp_path):
    p = _chat([str(REPO_ROOT / "sample_archive/bad/garbage.hea"), "--model", str(llava_converted)], "", tmp_path)
    assert p.returncode == 2 and "garbage.hea" in p.stderr and "bad_header" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.vllm
@pytest.mark.shared
@pytest.mark.slow
def test_chat_end_to_end(llava_converted, ecg_server, tmp_path):
    import openai

    q1, q2 = "Please describe this ECG.", "What is the rhythm?"
    # no --lora: the model folder's own adapter (lora/), which the server serves as "ecg-chat"
    p = _chat([str(REPO_ROOT / RECORD), "--model", str(llava_converted), "--max-tokens", "8", "--verbose"],
              f"{q1}\n/plot plot.png\n/save conv.json\n{q2}\n/save conv2.json\n/reset\n/save empty.json\n/quit\n",
              tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    # --verbose: vLLM's warnings get through (its logger writes to stdout unless told otherwise),
    # and ecgbatch's one-line summary of them is not said
    assert [n for n in NOISE if n in p.stderr] and "vLLM CPU backend: no" not in p.stderr, p.stderr[-3000:]
    logs = p.stdout + p.stderr
    assert not [n for n in UNCLEAN_EXIT if n in logs], logs[-3000:]   # AsyncLLM shut down, not left to exit
    out = p.stdout
    assert "12 leads (I II III aVR aVL aVF V1 V2 V3 V4 V5 V6), 500 Hz, 10.0 s" in out
    assert out.count("lead II (10.0 s") == 2                  # once at the start, once for /plot
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    conv = json.loads((tmp_path / "conv2.json").read_text())
    roles = [m["role"] for m in conv["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"] and conv["messages"][2]["content"] == q2
    first = json.loads((tmp_path / "conv.json").read_text())["messages"][1]["content"]
    assert first and first in out                              # streamed to the terminal
    assert json.loads((tmp_path / "empty.json").read_text())["messages"] == []
    found = json.loads((tmp_path / "conv.json").read_text())["findings"]   # measured, not stated (fixture's config)
    assert [f["label"] for f in found][:1] == ["heart_rate"] and "findings: heart rate " in out
    api = openai.OpenAI(base_url=ecg_server["url"] + "/v1", api_key=ecg_server["key"], max_retries=0)
    ref = api.chat.completions.create(model=ecg_server["adapter"], max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": [{"type": "ecg", "ecg": {"path": "cinc2021/A0689.hea"}}, {"type": "text", "text": q1}]}])
    assert first == ref.choices[0].message.content.strip()


@pytest.mark.shared
def test_grounded_chat_states_the_grounds_once_before_the_first_question(llava_converted, sample_archive):
    """ChatSession's turn prompts with --grounded: the grounding's lines before the first user
    question only (the server builds the same with ground_conversation); the engine's prompt_ids
    is the real tokenizer's (ecgbatch.llava.prompting), no engine is started here."""
    from types import SimpleNamespace

    from ecgbatch.commands.chat import ChatSession
    from ecgbatch.io import read_record
    from ecgbatch.llava.grounding import ground, measure_for_grounds
    from ecgbatch.llava.loading import load_tokenizer, read_config
    from ecgbatch.llava.prompting import prompt_ids

    cfg = read_config(llava_converted)
    tok = load_tokenizer(llava_converted, cfg)
    engine = SimpleNamespace(prompt_ids=lambda q, h=None: prompt_ids(tok, q, cfg, h))
    g = ground(measure_for_grounds(read_record(str(sample_archive / "ludb" / "1.hea"))))
    assert g.text.startswith("Measured: heart rate")
    s = ChatSession(engine, None, "ludb/1", None, "m", 4, grounding=g, grounded=True)
    assert s.prompt_ids("Rate?") == prompt_ids(tok, g.question("Rate?"), cfg)
    s.history.append(("Rate?", "45 bpm."))
    assert s.prompt_ids("Axis?") == prompt_ids(tok, "Axis?", cfg, [(g.question("Rate?"), "45 bpm.")])
    plain = ChatSession(engine, None, "ludb/1", None, "m", 4, grounding=g, grounded=False)
    assert plain.prompt_ids("Rate?") == prompt_ids(tok, "Rate?", cfg)
