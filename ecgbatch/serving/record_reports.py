"""Reports for a few records in this process: the offline path of `ecgbatch report RECORD...`,
which the command line, the demo and tests call (the archive path is the Ray Data job of
ecgbatch.pipelines.report; chat and the server stream from the async engine instead).

``report_records`` resolves the model and its adapter (ecgbatch.models.llava_model), checks them
(ecgbatch.serving.folder), reads the records (ecgbatch.llava.inputs.read_for_model), computes the
diagnosis-driven prompts when asked (ecgbatch.llava.diagnosis_prompt, before the engine starts,
so that a missing probe fails fast) and generates through one vLLM engine (ecgbatch.serving.engine).
vLLM itself is imported when the engine starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ecgbatch.llava.contradictions import report_fields
from ecgbatch.llava.diagnosis_prompt import FindingsLabeller, diagnosis_prompt
from ecgbatch.llava.grounding import ground_inputs, grounds_labeller, use_grounded
from ecgbatch.llava.inputs import read_for_model
from ecgbatch.llava.questions import DEFAULT_QUESTION
from ecgbatch.models import DEFAULT_LLAVA, llava_model
from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest, engine_env
from ecgbatch.serving.folder import check_adapter, check_model_folder


@dataclass
class RecordReports:
    results: list                  # an EcgResult per readable record, in order
    failed: list                   # [(record, message)] of the unreadable ones
    adapter: Optional[Path]        # the LoRA adapter used (--lora, else the model's own, else None)
    findings: Optional[list] = None   # diagnosis-prompt findings per result (None: off)
    ddp: object = False            # the findings labeller's description, or False (the --json key)
    grounded: bool = False         # whether the prompts carried the grounded prompt
    grounds: Optional[list] = None  # per result: {"findings", "contradictions"} (always computed)


def diagnosis_questions(model: str, ecgs, question: str):
    """(question per record, findings per record, labeller description) of the records' ECGs."""
    labeller = FindingsLabeller.for_model(model)
    findings = labeller.findings(np.stack([x for _, x in ecgs]))
    return [diagnosis_prompt(question, f) for f in findings], findings, labeller.describe()


def report_records(records: list[str], model: str = DEFAULT_LLAVA, lora: Optional[Path] = None,
                   question: str = DEFAULT_QUESTION, max_tokens: int = 256, dtype: str = "auto",
                   ddp: bool = False, grounded: Optional[bool] = None, on_unreadable: Optional[Callable[[str, str], None]] = None,
                   log: Optional[Callable[[str], None]] = None, repetition_penalty: Optional[float] = None
                   ) -> RecordReports:
    """What `ecgbatch report RECORD...` does (see the module doc). ``ddp``: the diagnosis-driven
    prompt; ``grounded``: the grounded prompt (None: the model's config); ``repetition_penalty``:
    decoding (None: the model's config). Each result's
    ``findings``/``contradictions`` are computed either way (RecordReports.grounds). ``on_unreadable(record, message)`` is called for each unreadable record before the
    engine starts; ``log`` hears the model's assembly at first use. Raises EcgLlavaError /
    CheckpointError (the model, the adapter, the diagnosis prompt, the engine)."""
    engine_env()
    folder, lora = llava_model(model, lora, log=log)
    config = check_model_folder(folder)
    use = use_grounded(grounded, ddp, config)
    rank = check_adapter(lora, config) if lora is not None else None
    measurements: list = []
    ecgs, failed = read_for_model(records, config, measurements)
    for path, msg in failed:
        if on_unreadable is not None:
            on_unreadable(path, msg)
    out = RecordReports([], failed, lora, grounded=use)
    if not ecgs:
        return out
    questions = [question] * len(ecgs)
    if ddp:
        questions, out.findings, out.ddp = diagnosis_questions(model, ecgs, question)
    groundings = ground_inputs(measurements, [x for _, x in ecgs], grounds_labeller(model), config.grounding_wording)
    if use:
        questions = [g.question(q) for g, q in zip(groundings, questions)]
    engine = EcgLlavaEngine(folder, dtype=dtype, lora_rank=rank, max_num_seqs=max(1, len(ecgs)),
                            repetition_penalty=repetition_penalty)
    try:
        reqs = [EcgRequest(x, engine.prompt_ids(q), id=path) for (path, x), q in zip(ecgs, questions)]
        out.results = engine.generate(reqs, max_tokens=max_tokens, lora=lora)
    finally:
        engine.shutdown()      # now, not at interpreter exit (no "engine core exited unexpectedly")
    out.grounds = [report_fields(r.text, g) for r, g in zip(out.results, groundings)]
    return out
