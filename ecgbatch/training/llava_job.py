"""ECG-LLaVA training (stage "align": projector only; stage "sft": LoRA + projector) as a Ray
Train ``TorchTrainer`` job on 1..N workers.

Driver (``run_job``): reads the ECG-Instruct items, asks a seeded fraction of the report items
with diagnosis-driven prompts (``data.ddp``, ``ecgbatch.training.instruct_diagnosis_prompt``; not to be
confused with torch's DistributedDataParallel below), labels every conversation (the loss mask,
``ecgbatch.training.llava_task``), computes the frozen tower's tokens once per record
(``ecgbatch.training.ecg_tokens`` cache) and puts examples + tokens into the object store.
Worker (``train_loop_per_worker``): the shared loop of ``ecgbatch.training.loop`` (setup,
precision, resume, step, checkpoint, report) around ``LlavaTrainTask``, which supplies the model
with its stage's trainable tensors, batches of labelled conversations, the LM loss and how a
checkpoint's projector and LoRA adapter are restored. The checkpoint's model/ is the
trained-only folder ``ecgbatch train export`` ships.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ecgbatch.eval.report_goals import axis_category
from ecgbatch.llava.assemble import LORA_SUBDIR, base_model, load_projector, save_trained_only
from ecgbatch.llava.configuration_ecg_llava import IGNORE_INDEX, num_ecg_tokens
from ecgbatch.llava.diagnosis_prompt import DiagnosisPromptUnavailableError, FindingsLabeller
from ecgbatch.llava.grounding import stated_report
from ecgbatch.llava.inputs import preprocess_for_model
from ecgbatch.text.findings import extract_findings, positive_findings
from ecgbatch.training import data as D
from ecgbatch.training.checkpointing import MODEL_SUBDIR, latest_checkpoint
from ecgbatch.training.ecg_tokens import ecg_tokens
from ecgbatch.training.instruct_diagnosis_prompt import apply_diagnosis_prompts
from ecgbatch.training.instruct_format import InstructItem, read_instruct
from ecgbatch.training.instruct_grounded import apply_grounded_prompts
from ecgbatch.training.llava_config import LlavaJobConfig
from ecgbatch.training.llava_task import (LlavaTask, LoraConfig, collate, configure_stage, fit_length,
                                          label_conversation)
from ecgbatch.training.loop import SimulatedCrash, TrainTask, Worker, epoch_steps, launch, plan_run, run_worker
from ecgbatch.training.pairs import resolve_path

__all__ = ["LlavaTrainTask", "SimulatedCrash", "build_model", "ddp_items", "init_adapter", "init_folder",
           "load_adapter", "prepare", "restore_trained", "run_job", "train_loop_per_worker"]


# --- shared by driver and workers ----------------------------------------------------------

def init_folder(job: LlavaJobConfig) -> Path | None:
    """The trained-only folder ``init`` names (itself, a checkpoint's model/, or a run folder's
    latest checkpoint's), or None without ``init``."""
    if not job.init:
        return None
    p = resolve_path(job.init)
    if not (p / "model.safetensors").is_file() and not (p / MODEL_SUBDIR).is_dir():
        p = latest_checkpoint(p) or p          # a run folder: its latest checkpoint
    if (p / MODEL_SUBDIR).is_dir():
        p = p / MODEL_SUBDIR
    if not (p / "model.safetensors").is_file():
        raise FileNotFoundError(f"init {job.init!r} holds no projector weights (model.safetensors)")
    return p


def build_model(job: LlavaJobConfig, log=None):
    """(model, tokenizer) at the start of training: the base, plus ``init``'s projector."""
    model, tok = base_model(job.model.base(), log)
    p = init_folder(job)
    if p is not None:
        load_projector(model, p)
    return model, tok


def load_adapter(model, folder: Path) -> None:
    """A trained-only folder's LoRA adapter into ``model`` (stage "sft" configured)."""
    from peft import set_peft_model_state_dict   # optional dependency: LoRA stages only

    res = set_peft_model_state_dict(model.language_model,
                                    load_file(str(folder / LORA_SUBDIR / "adapter_model.safetensors")))
    if getattr(res, "unexpected_keys", None):
        raise ValueError(f"checkpoint {str(folder.parent)!r}: adapter keys do not fit: "
                         f"{res.unexpected_keys[:5]}")


def restore_trained(model, folder: Path, stage: str) -> None:
    """A trained-only folder's projector, and for stage "sft" its LoRA adapter, into ``model``
    (whose stage is configured: ``configure_stage``)."""
    load_projector(model, folder)
    if stage == "sft":
        load_adapter(model, folder)


def init_adapter(job: LlavaJobConfig, model) -> bool:
    """An sft job whose ``init`` holds a LoRA adapter (an earlier sft run or its export) continues
    from it: the adapter is loaded into ``model`` (stage configured; build_model loaded ``init``'s
    projector). Whether one was."""
    start = init_folder(job)
    if start is None or job.stage != "sft" or not (start / LORA_SUBDIR).is_dir():
        return False
    load_adapter(model, start)
    return True


def save_trained(job: LlavaJobConfig):
    """The checkpoint's model writer: the trained-only folder (projector, LoRA adapter)."""
    def save(model, folder):
        if job.data.grounded >= 0.5:   # trained mostly on grounded prompts: served with them by default
            model.config.prompt = {**(model.config.prompt or {}), "grounded": True, "wording": job.data.wording}
        return save_trained_only(model, folder, job.model.base(), extra={"trained_by": {
            "stage": job.stage, "run": job.name, "ddp": job.data.ddp, "grounded": job.data.grounded}})
    return save


# --- worker side ---------------------------------------------------------------------------

class LlavaTrainTask(TrainTask):
    """ECG-LLaVA's part of the loop: the stage's trainable tensors (projector, + LoRA for sft),
    batches of labelled conversations with their cached tower tokens, the LM loss."""

    def __init__(self, w: Worker):
        import ray.train.torch

        job = self.job = LlavaJobConfig.from_dict(w.config["job"])
        self.w = w
        torch.manual_seed(job.seed)
        model, tok = build_model(job)
        self.model = model
        lo = job.lora
        trainable = configure_stage(model, job.stage, LoraConfig(lo.r, lo.alpha, lo.dropout, list(lo.target_modules)))
        init_adapter(job, model)
        model.to(w.device)
        self.module = ray.train.torch.prepare_model(LlavaTask(model), move_to_device=True)
        self.optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if n in set(trainable)],
                                           lr=job.optim.lr, betas=job.optim.betas, eps=job.optim.eps,
                                           weight_decay=job.optim.weight_decay)
        self.examples, self.tokens = w.arrays["examples"], w.arrays["tokens"]   # tokens: [R, N, W]
        self.rec_of = np.asarray(w.arrays["rec_of"])                            # example -> row of tokens
        self.steps = epoch_steps(len(self.examples), job)
        self.total_steps = self.steps * job.optim.epochs
        self.warmup_steps = job.optim.warmup_steps or math.ceil(job.warmup_ratio * self.total_steps)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.mine = D.local_slice(job.optim.batch_size, w.rank, w.world)
        self.save_model = save_trained(job)

    def begin_epoch(self, epoch: int) -> None:
        self.order = D.epoch_order(len(self.examples), epoch, self.job.seed)
        self.module.train()

    def batch(self, epoch: int, step: int):
        B, device = self.job.optim.batch_size, self.w.device
        local = self.order[list(range(step * B, (step + 1) * B)[self.mine])]
        batch = {k: v.to(device) for k, v in collate([self.examples[i] for i in local], self.pad_id).items()}
        return batch, self.tokens[torch.as_tensor(self.rec_of[local])].to(device)

    def losses(self, batch) -> dict:
        b, toks = batch
        return {"lm_loss": self.module(b["input_ids"], b["labels"], b["attention_mask"], toks)}

    def clip_parameters(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def restore_model(self, folder: Path) -> None:
        restore_trained(self.model, folder, self.job.stage)


def train_loop_per_worker(config: dict) -> None:
    run_worker(config, LlavaTrainTask)


# --- driver side ---------------------------------------------------------------------------

def seeded_subset(items: list, n: int | None, seed: int) -> list:
    """At most ``n`` of ``items`` (all when n is None), drawn with a generator seeded by (seed, 11),
    in their order."""
    if n is None or len(items) <= n:
        return list(items)
    keep = np.sort(np.random.default_rng([seed, 11]).permutation(len(items))[:n])
    return [items[i] for i in keep]


def select_items(job: LlavaJobConfig):
    """The job's ECG-Instruct items (split, kinds, seeded subset: data.max_items, overall or per kind)."""
    items = every = read_instruct(resolve_path(job.data.instruct), job.data.root, split=job.data.split)
    if job.data.kinds:
        items = [it for it in items if it.meta.get("kind") in set(job.data.kinds)]
    cap = job.data.max_items
    if isinstance(cap, dict):
        by_kind: dict = {}
        for it in items:
            by_kind.setdefault(it.meta.get("kind"), []).append(it)
        items = [it for kind, group in by_kind.items() for it in seeded_subset(group, cap.get(kind), job.seed)]
    elif cap is not None:
        items = seeded_subset(items, cap, job.seed)
    if not items:
        raise ValueError(f"no items of {job.data.instruct!r} match split={job.data.split!r}, kinds={job.data.kinds!r}")
    if job.data.yes_no:
        items = items + yes_no_items(every, job.data.yes_no, job.seed)
    return repeat_items(items, job.data.repeat)


def yes_no_items(items, per_answer: dict, seed: int) -> list:
    """``data.yes_no: {name: n}``: for each FOCUS_QUESTIONS name, one-question items ("dialogue" kind)
    on up to n records whose labels answer it "yes" and n answering "no" (a seeded draw from the
    records of ``items``' report items, their ``meta.record_facts``), so the question is seen with
    both answers as often: the natural rates (LVH in about 1 in 10 records) teach "no". The names
    and counts are checked by LlavaJobConfig."""
    from types import SimpleNamespace

    from ecgbatch.training.instruct_questions import conversation, focus_turn

    records = [it for it in items if it.meta.get("kind") == "report" and it.meta.get("record_facts")]
    out = []
    for j, (name, n) in enumerate(sorted(per_answer.items())):
        rng = np.random.default_rng([seed, 23, j])
        by_answer: dict = {True: [], False: []}
        for it in records:
            rf = it.meta["record_facts"]
            turn = focus_turn(name, SimpleNamespace(present=rf.get("present") or [], absent=rf.get("absent") or []), rng)
            if turn is not None:
                by_answer[turn["facts"]["present"]].append((it, turn))
        for present in (True, False):
            group = by_answer[present]
            for k in sorted(rng.permutation(len(group))[:n].tolist()):
                it, turn = group[k]
                meta = {key: v for key, v in it.meta.items() if key not in ("facts", "kind")}
                out.append(InstructItem(f"{it.id.rsplit('/', 1)[0]}/yes_no-{name}", it.ecg, it.ecg_path,
                                        conversation([turn]),
                                        {**meta, "kind": "dialogue", "facts": [{"kind": turn["kind"], **turn["facts"]}]}))
    return out


def _check_repeat(repeat: dict, name: str) -> None:
    bad = [k for k, n in repeat.items() if not (isinstance(n, int) and n >= 1)]
    if bad:
        raise ValueError(f"data.{name} wants a whole number >= 1 per finding, got {repeat!r}")
    positive_findings("", tuple(repeat))        # an unknown finding key raises here


def repeat_items(items, repeat: dict | None):
    """Report items whose answer states one of ``repeat``'s findings (negation-aware), ``k`` times
    in all (the largest k of the findings it states), kept next to each other; the loader shuffles."""
    if not repeat:
        return list(items)
    _check_repeat(repeat, "repeat")
    out = []
    for it in items:
        k = 1
        if it.meta.get("kind") == "report" and len(it.conversations) > 1:
            stated = positive_findings(it.conversations[-1]["value"], tuple(repeat))
            k = max((repeat[f] for f in stated), default=1)
        out.extend([it] * k)
    return out


def repeat_grounded_items(items, repeat: dict | None):
    """Items (any kind) asked with their grounded prompt (``meta.grounding``) whose prompt states one
    of ``repeat``'s findings (ecgbatch.llava.grounding.stated_report of its findings) and whose answers
    state it too (negation-aware), ``k`` times in all (the largest k of such findings). It teaches the
    link from the prompt's statement to the answer's without raising the finding's rate where the
    prompt is silent (data.repeat repeats every answer that states it). Only agreeing presences are
    repeated, not agreeing absences: on yes/no dialogue turns that raises the "yes" answers (v10 in
    bench/RESULTS.md answered "yes" to every axis question)."""
    if not repeat:
        return list(items)
    _check_repeat(repeat, "repeat_grounded")
    keys, out = tuple(repeat), []
    for it in items:
        k = 1
        grounding = it.meta.get("grounding")
        if grounding:
            prompt = positive_findings(stated_report(grounding.get("findings") or ()), keys)
            if prompt:
                answers = " ".join(t["value"] for t in it.conversations[1::2])
                k = max((repeat[f] for f in prompt & positive_findings(answers, keys)), default=1)
        out.extend([it] * k)
    return out


# data.drop_disagreeing: name -> the finding keys that state it (axis: its category, compared as a category)
AGREE_FINDINGS = {"af": ("atrial_fibrillation", "atrial_flutter"), "lvh": ("lvh",), "bbb": ("rbbb", "lbbb"),
                  "axis": ("axis_left", "axis_right", "axis_normal")}


def _says(text: str, name: str) -> str | None:
    """What ``text`` says of one AGREE_FINDINGS name: its axis category for "axis" (None: none
    stated); else "yes" (present or hedged), "no" (negated and not present elsewhere) or None."""
    if name == "axis":
        return axis_category(text)
    states = set(extract_findings(text, AGREE_FINDINGS[name]).values())
    if states & {"present", "uncertain"}:
        return "yes"
    return "no" if states else None


def disagreements(item, names) -> set[str]:
    """The ``names`` (AGREE_FINDINGS) on which a grounded item's answers disagree with what its own
    prompt states (ecgbatch.llava.grounding.stated_report of ``meta.grounding``'s findings).

    - a report answer disagrees when it states AF/flutter, LVH or a complete bundle branch block and
      its prompt does not, or the other way round (a report lists its findings: silence is "no"), or
      states another axis category than the prompt's;
    - a dialogue answer disagrees when it affirms one of those that its prompt does not state, denies
      one that its prompt states, or names another axis category.
    An axis is judged only where the prompt states one (nothing is measured on some records).
    Items asked without grounding have no disagreements."""
    grounding = item.meta.get("grounding")
    if not grounding:
        return set()
    prompt = stated_report(grounding.get("findings") or ())
    answers = [t["value"] for t in item.conversations[1::2]]
    report = item.meta.get("kind") == "report"
    out = set()
    for name in names:
        p = _says(prompt, name) or (None if name == "axis" else "no")
        for a in answers:
            s = _says(a, name)
            if report and s is None and name != "axis":
                s = "no"
            if s is not None and p is not None and s != p:
                out.add(name)
    return out


def drop_disagreeing_items(items, names, log=print):
    """``items`` without those whose answers disagree with their own grounded prompt on one of
    ``names`` (``disagreements``): the model is then shown only prompts that its answers follow, at
    the findings' natural rates (unlike data.repeat_grounded, which raised one side)."""
    if not names:
        return list(items)
    unknown = sorted(set(names) - set(AGREE_FINDINGS))
    if unknown:
        raise ValueError(f"data.drop_disagreeing names {unknown!r}; known: {sorted(AGREE_FINDINGS)}")
    out, dropped = [], {}
    for it in items:
        bad = disagreements(it, names)
        for name in bad:
            dropped[name] = dropped.get(name, 0) + 1
        if not bad:
            out.append(it)
    log(f"data.drop_disagreeing {list(names)}: {len(items) - len(out)} of {len(items)} items left out "
        f"(per finding: {dict(sorted(dropped.items()))})")
    return out


def label_items(items, tokenizer, config, max_length: int, log=print):
    """[(ids, labels)] for the items; conversations whose labels are all masked (template
    mismatch, or the answer cut by max_length) are left out and counted."""
    n_ecg = num_ecg_tokens(config)
    out, keep, dropped = [], [], 0
    for i, it in enumerate(items):
        ids, labels, mismatch = label_conversation(it.conversations, tokenizer, config)
        ids, labels = fit_length(ids, labels, n_ecg, max_length)
        if mismatch or all(t == IGNORE_INDEX for t in labels):
            dropped += 1
            continue
        out.append((ids, labels))
        keep.append(i)
    if dropped:
        log(f"{dropped} of {len(items)} conversations have no labelled token left (template mismatch or "
            f"max_length {max_length}) and are left out")
    return out, keep


def item_record_reader(job: LlavaJobConfig):
    """item -> its Record (the job's reader options per source)."""
    def read_record(it):
        opts = job.data.read_options.get(it.meta.get("source"), {}) if job.data.read_options else {}
        return it.read_ecg(**opts)
    return read_record


def item_reader(job: LlavaJobConfig, config):
    """item -> the model's input [leads, samples] (the job's reader options per source)."""
    read_record = item_record_reader(job)

    def read(it):
        return preprocess_for_model(read_record(it), config, record_id=it.id)
    return read


def ddp_items(job: LlavaJobConfig, items, config, log=print):
    """``data.ddp``: the chosen report items asked with their DDP findings (instruct_diagnosis_prompt)."""
    if not job.data.ddp:
        return items

    labeller = FindingsLabeller.for_base(job.model.base(), preprocess=config.preprocess)
    read_item = item_reader(job, config)
    by_path = {str(it.ecg_path): it for it in items}
    items, _ = apply_diagnosis_prompts(items, job.data.ddp, job.seed, labeller, lambda p: read_item(by_path[p]),
                         job.data.cache_dir, config, log)
    return items


def grounded_items(job: LlavaJobConfig, items, config, log=print):
    """``data.grounded``: the chosen report items asked with their grounded prompt
    (instruct_grounded; the probes of the tower's encoder when it has them, else measurements only)."""
    if not job.data.grounded:
        return items
    try:
        labeller = FindingsLabeller.for_base(job.model.base(), preprocess=config.preprocess)
    except DiagnosisPromptUnavailableError as exc:
        log(f"grounded prompt: measurements only ({exc})")
        labeller = None
    read_item = item_reader(job, config)
    by_path = {str(it.ecg_path): it for it in items}
    items, _ = apply_grounded_prompts(items, job.data.grounded, job.seed, item_record_reader(job), labeller,
                                      lambda p: read_item(by_path[p]), job.data.cache_dir, config, log,
                                      only_supported=job.data.only_supported, wording=job.data.wording,
                                      evidence=bool(job.data.evidence_first),
                                      consistent=job.data.evidence_first == "consistent")
    return items


def prepare(job: LlavaJobConfig, log=print):
    """Driver-side data: labelled examples, tower tokens per record, example -> record row."""
    model, tok = build_model(job, log)
    items = grounded_items(job, ddp_items(job, select_items(job), model.config, log), model.config, log)
    if job.data.drop_disagreeing:
        items = drop_disagreeing_items(items, job.data.drop_disagreeing, log)
    if job.data.repeat_grounded:
        n = len(items)
        items = repeat_grounded_items(items, job.data.repeat_grounded)
        log(f"data.repeat_grounded {job.data.repeat_grounded}: {len(items) - n} more presentations of items whose "
            f"grounded prompt and answer both state the finding")
    examples, keep = label_items(items, tok, model.config, job.data.max_length, log)
    items = [items[i] for i in keep]
    paths = sorted({str(it.ecg_path) for it in items})
    row = {p: i for i, p in enumerate(paths)}
    by_path = {str(it.ecg_path): it for it in items}
    read_item = item_reader(job, model.config)
    tokens = ecg_tokens(model, paths, lambda p: read_item(by_path[p]), job.data.cache_dir, log=log)
    rec_of = [row[str(it.ecg_path)] for it in items]
    return examples, tokens, rec_of, [it.id for it in items]


def run_job(job: LlavaJobConfig, num_workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None,
            resume: bool = False, log=print):
    """Launch the TorchTrainer; returns the Ray ``Result`` (None when a resumed run is done)."""
    existing, todo = plan_run(job, num_workers, resume, log)
    if not todo:
        return None
    run_path = job.run_path()
    run_path.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    examples, tokens, rec_of, ids = prepare(job, log)
    log(f"{len(examples)} labelled conversations on {tokens.shape[0]} records ({time.time() - t0:.0f} s)")
    (run_path / "items.json").write_text(json.dumps(ids, indent=0))
    (run_path / "job.json").write_text(json.dumps(job.to_dict(), indent=2, default=str))
    return launch(train_loop_per_worker, job, {"examples": examples, "tokens": tokens, "rec_of": rec_of}, {},
                  existing, num_workers, gpus_per_worker, address, log)
