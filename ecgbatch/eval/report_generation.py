"""What `ecgbatch eval report --model M` generates before it scores: the reports of an ECG-LLaVA
model for the report items of ECG-Instruct data (``ecgbatch.eval.llava_eval.generate_reports``:
HF generate, greedy, batched), optionally with the diagnosis-driven prompt (the paper's DDP,
ecgbatch.llava.diagnosis_prompt). The model is found as every generative command finds it
(ecgbatch.models.llava_model: its own adapter unless another is given)."""
from __future__ import annotations

from typing import Callable, Optional

from ecgbatch.eval.llava_eval import generate_reports, report_items
from ecgbatch.llava.contradictions import report_fields
from ecgbatch.llava.diagnosis_prompt import FindingsLabeller
from ecgbatch.llava.grounding import ground_inputs, grounds_labeller, measure_for_grounds, use_grounded
from ecgbatch.llava.inputs import preprocess_for_model
from ecgbatch.models import llava_model


def record_key(item) -> str:
    """The id a report is scored under: ``<source>/<record_id>`` (as the reference file keys it)."""
    return f"{item.meta.get('source')}/{item.meta.get('record_id')}"


def generate_for_items(model: str, items, limit: Optional[int] = None, read_options: Optional[dict] = None,
                       batch_size: int = 8, max_new_tokens: int = 96, ddp: bool = False,
                       log: Optional[Callable[[str], None]] = None, what: str = "the items",
                       grounded: Optional[bool] = None) -> tuple[dict, dict, object, dict]:
    """({record key: generated report}, {record key: the question as asked}, the findings
    labeller's description or False, {record key: {"findings", "contradictions"}} (always; with
    ``grounded``, None: the model's config, the questions carry the grounding)) for the report items of ``items`` (ECG-Instruct items),
    at most ``limit`` of them, evenly spaced (every source keeps its share). ``read_options``:
    {source name: reader options}. Raises ValueError when there is no report item (naming ``what``)."""
    from ecgbatch.llava import load_ecg_llava     # torch, transformers

    items = report_items(items)
    if limit is not None and len(items) > limit:
        items = [items[int(i * len(items) / limit)] for i in range(limit)]
    if not items:
        raise ValueError(f"{what} has no report items")
    labeller = FindingsLabeller.for_model(model) if ddp else None   # before the model: a missing probe fails fast
    folder, lora = llava_model(model, log=log)
    m, tok = load_ecg_llava(folder, lora=lora, merge_lora=lora is not None)
    use = use_grounded(grounded, ddp, m.config)
    probes = labeller if labeller is not None else grounds_labeller(model)
    opts = read_options or {}
    measured: dict[str, object] = {}

    def read(it):
        rec = it.read_ecg(**opts.get(it.meta.get("source"), {}))
        measured[it.id] = measure_for_grounds(rec)
        return preprocess_for_model(rec, m.config, record_id=it.id)

    def ground(chunk, x):
        return ground_inputs([measured[it.id] for it in chunk], x, probes, m.config.grounding_wording)

    asked: list[str] = []
    grounds: list = []
    texts = generate_reports(m, tok, items, read, batch_size, max_new_tokens, log=log, ddp=labeller, asked=asked,
                             ground=ground, grounded=use, grounds=grounds)
    keys = [record_key(it) for it in items]
    fields = {k: report_fields(t, g) for k, t, g in zip(keys, texts, grounds)}
    return (dict(zip(keys, texts)), dict(zip(keys, asked)), (labeller.describe() if labeller is not None else False),
            fields)
