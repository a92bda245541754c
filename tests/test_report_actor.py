"""The report job's engine actor (ecgbatch.pipelines.report.ReportUDF) keeps the prompt ids of
its recent questions only: grounded, rag and ddp prompts are one question per record, so a long
run must not keep every one (issue 19). The cache is the actor's own (prompt_id_cache) on the
fixture model's real tokenizer; no engine, no Ray."""
from __future__ import annotations

import threading

from ecgbatch.pipelines.report import PROMPT_ID_CACHE, prompt_id_cache


def test_prompt_ids_cache_is_a_small_lru_and_thread_safe(llava_converted):
    from ecgbatch.llava.loading import load_tokenizer, read_config
    from ecgbatch.llava.prompting import prompt_ids

    cfg = read_config(llava_converted)
    tok = load_tokenizer(llava_converted, cfg)
    calls = []

    def tokenize(q):
        calls.append(q)
        return prompt_ids(tok, q, cfg)

    ids = prompt_id_cache(tokenize, maxsize=4)
    first = ids("Measured: heart rate 61 bpm. Please describe this ECG.")
    assert first == prompt_ids(tok, "Measured: heart rate 61 bpm. Please describe this ECG.", cfg)
    for bpm in range(62, 72):                          # one grounded question per record
        ids(f"Measured: heart rate {bpm} bpm. Please describe this ECG.")
        ids("Please describe this ECG.")                # the fixed question stays recently used
    info = ids.cache_info()
    assert info.currsize == info.maxsize == 4          # bounded, whatever the run's length
    assert calls.count("Please describe this ECG.") == 1 and info.hits == 9
    ids("Measured: heart rate 61 bpm. Please describe this ECG.")       # the oldest was evicted
    assert calls.count("Measured: heart rate 61 bpm. Please describe this ECG.") == 2
    assert 1 <= PROMPT_ID_CACHE <= 1024                # the actor's size: small

    errors = []                                        # the batches' threads share one fast tokenizer

    def worker(k):
        try:
            for i in range(40):
                assert ids(f"Measured: QT {k * 100 + i} ms.") == prompt_ids(tok, f"Measured: QT {k * 100 + i} ms.", cfg)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and ids.cache_info().currsize == 4
