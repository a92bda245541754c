"""Grounds-first decoding, an experiment for issue 20: the report's first sentences are the grounds
themselves (ecgbatch.llava.grounding.STATED_RULES: probe findings above their thresholds, the
measured axis category, measured brady/tachycardia, LVH when the voltage criteria are met), given
to the model as the start of its answer (a prefilled assistant turn), and the model writes the rest.
Against the model alone (report --input's defaults) on the same records, prompts and engine.

It reads a `report --input -o` file whose rows carry `findings` and `question` (the grounded prompt
each record was given; --max-tokens 1 is enough for it), so both runs see the very same prompts:

    python bench/grounds_first.py --rows .ecgbatch/goals/reports-g.jsonl --model ecg-llava-mini \
        --out .ecgbatch/goals/grounds-first.jsonl [--plain .ecgbatch/goals/model-only.jsonl]
    python bench/report_goals.py score --out .ecgbatch/goals --reports .ecgbatch/goals/grounds-first.jsonl

--plain also writes the model-only reports generated here (no prefix), to score beside it. Greedy,
float32, the model's own adapter, max 256 new tokens as report --input; one engine, batches of 16.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=Path, required=True, help="report --input -o file (rows with findings, question)")
    ap.add_argument("--model", default="ecg-llava-mini")
    ap.add_argument("--out", type=Path, required=True, help="grounds-first reports (JSON Lines)")
    ap.add_argument("--plain", type=Path, default=None, help="also the model-only reports, same engine")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)

    import numpy as np
    from tqdm import tqdm

    from ecgbatch.io import read_record
    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.models.resolve import llava_model
    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest, engine_env
    from ecgbatch.training.instruct_format import write_jsonl
    from report_goals import grounds_report     # bench/report_goals.py, beside this script

    rows = [json.loads(x) for x in a.rows.read_text().splitlines() if x.strip()][: a.limit]
    folder, adapter = llava_model(a.model)
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"] if adapter else None
    engine_env()
    engine = EcgLlavaEngine(folder, dtype="float32", lora_rank=rank)
    tok = engine.tokenizer
    modes = {"grounds_first": a.out, **({"plain": a.plain} if a.plain else {})}
    out = {m: [] for m in modes}
    t0 = time.time()
    for i in tqdm(range(0, len(rows), a.batch), desc="batches"):
        chunk = rows[i: i + a.batch]
        ecgs = [np.asarray(preprocess_for_model(read_record(r["source"]), engine.config), np.float32) for r in chunk]
        for mode in modes:
            reqs, prefixes = [], []
            for r, ecg in zip(chunk, ecgs):
                ids = engine.prompt_ids(r["question"])
                prefix = grounds_report(r["findings"]) if mode == "grounds_first" else ""
                if prefix:
                    ids = ids + tok(prefix + " ", add_special_tokens=False)["input_ids"]
                reqs.append(EcgRequest(ecg, ids, r["record_id"]))
                prefixes.append(prefix)
            for r, p, res in zip(chunk, prefixes, engine.generate(reqs, max_tokens=a.max_tokens, lora=adapter)):
                text = (p + " " + res.text.strip()).strip() if p else res.text.strip()
                out[mode].append({"record_id": r["record_id"], "report": text, "prefix": p,
                                  "n_output_tokens": res.n_output_tokens, "finish_reason": res.finish_reason})
    for mode, path in modes.items():
        write_jsonl(out[mode], path)
        print(f"{mode}: {len(out[mode])} reports -> {path}")
    print(f"{len(rows)} records, {time.time() - t0:.0f} s")
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
