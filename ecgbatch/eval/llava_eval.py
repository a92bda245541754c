"""Run an ECG-LLaVA model over held-out ECG-Instruct report items, then score the reports.

``generate_reports`` asks each record's own report question (greedy, HF generate, batched);
``rhythm_goals`` measures what issue 11 asks of the rhythm statement, from the findings the
texts state (``ecgbatch.text.findings``): AF/flutter F1, the share of records whose stated rhythm
findings equal the reference's, and the false-AF rate on sinus records.
"""
from __future__ import annotations

import numpy as np

from ecgbatch.llava.diagnosis_prompt import diagnosis_prompt
from ecgbatch.text.findings import group_keys, positive_findings

AF_KEYS = ("atrial_fibrillation", "atrial_flutter")


def report_items(items):
    """The report-request items (one per record), in order."""
    return [it for it in items if it.meta.get("kind") == "report"]


def generate_reports(model, tokenizer, items, read, batch_size: int = 8, max_new_tokens: int = 96,
                     log=None, ddp=None, asked: list | None = None, ground=None, grounded: bool = False,
                     grounds: list | None = None) -> list[str]:
    """Greedy reports for ``items`` (their first question); ``read(item)`` -> model input.
    ``ddp``: a ``ecgbatch.llava.diagnosis_prompt.FindingsLabeller``: each question is asked after the findings its
    probes give the item's ECG (diagnosis-driven prompt). ``asked``: a list the questions as
    asked are appended to. ``ground(items, x)``: their ecgbatch.llava.grounding.Grounding per
    item (appended to ``grounds``); ``grounded``: each question is asked after its grounding."""
    import torch

    from ecgbatch.llava.prompting import prompt_ids

    cfg = model.config
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t >= 0]
    out: list[str] = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        qs = [it.conversations[0]["value"].replace(cfg.ecg_token, "").strip() for it in chunk]
        x_np = np.stack([read(it) for it in chunk])
        if ddp is not None:
            qs = [diagnosis_prompt(q, f) for q, f in zip(qs, ddp.findings(x_np))]
        if ground is not None:
            gs = ground(chunk, x_np)
            if grounded:
                qs = [g.question(q) for g, q in zip(gs, qs)]
            if grounds is not None:
                grounds.extend(gs)
        if asked is not None:
            asked.extend(qs)
        ids = [prompt_ids(tokenizer, q, cfg) for q in qs]
        n = max(len(i) for i in ids)
        x = torch.full((len(ids), n), pad, dtype=torch.long)
        att = torch.zeros_like(x)
        for b, i in enumerate(ids):
            x[b, :len(i)] = torch.as_tensor(i)
            att[b, :len(i)] = 1
        ecgs = torch.from_numpy(x_np).float()
        with torch.no_grad():
            new = model.generate(x, ecgs=ecgs, attention_mask=att, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stop or None, pad_token_id=pad)
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if log:
            log(f"generated {len(out)}/{len(items)}")
    return out


def _rate(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")


def rhythm_goals(preds: list[str], refs: list[str]) -> dict:
    """AF/flutter F1 (0-1), rhythm statement accuracy (records whose reference states a rhythm),
    false-AF rate (reference states sinus rhythm and no AF; prediction claims AF/flutter)."""
    rk = group_keys("rhythm")
    pr = [positive_findings(p, rk) for p in preds]
    rr = [positive_findings(r, rk) for r in refs]
    pa = [bool(set(AF_KEYS) & p) for p in pr]
    ra = [bool(set(AF_KEYS) & r) for r in rr]
    tp = sum(a and b for a, b in zip(pa, ra))
    fp = sum(a and not b for a, b in zip(pa, ra))
    fn = sum(b and not a for a, b in zip(pa, ra))
    with_rhythm = [i for i, r in enumerate(rr) if r]
    correct = sum(pr[i] == rr[i] for i in with_rhythm)
    sinus = [i for i, r in enumerate(rr) if not ra[i] and any(k.startswith("sinus") for k in r)]
    return {"af_f1": _rate(2 * tp, 2 * tp + fp + fn), "af_tp": tp, "af_fp": fp, "af_fn": fn,
            "rhythm_correct": _rate(correct, len(with_rhythm)), "rhythm_n": len(with_rhythm),
            "false_af_rate": _rate(sum(pa[i] for i in sinus), len(sinus)), "sinus_n": len(sinus)}


GOALS = {"af_f1": (">=", 0.8), "rhythm_correct": (">=", 0.85), "false_af_rate": ("<=", 0.05),
         "rouge_l": (">=", 30.0)}


def goal_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(metric, value, goal, met?) for the issue's goals (ROUGE-L on the 0-100 scale)."""
    rows = []
    for k, (op, g) in GOALS.items():
        v = res.get(k)
        ok = v is not None and v == v and (v >= g if op == ">=" else v <= g)
        rows.append((k, "n/a" if v is None or v != v else f"{v:.3f}", f"{op} {g:g}", "yes" if ok else "no"))
    return rows
