"""Report-generation metrics: BLEU-1/4, ROUGE-L, METEOR and clinical-efficacy F1, over lists of
generated and reference texts (one reference per item), all on a 0-100 scale.

- BLEU: sacrebleu's corpus BLEU with its defaults (tokenizer "13a", exponential smoothing,
  case-sensitive; texts are lower-cased here first, as ECG-Chat lower-cases reports).
  BLEU-4 = ``BLEU(max_ngram_order=4)``, BLEU-1 = ``BLEU(max_ngram_order=1)`` (unigram precision x
  brevity penalty), both over the whole corpus.
- ROUGE-L: rouge-score's ``RougeScorer(["rougeL"], use_stemmer=False)``, F-measure per item,
  averaged.
- METEOR: NLTK's ``meteor_score`` (exact, Porter-stem and WordNet-synonym matches; alpha 0.9,
  beta 3, gamma 0.5), per item on lower-cased ``\\w+|[^\\w\\s]`` tokens, averaged. It needs the
  WordNet 3.0 database: NLTK's own ``wordnet`` corpus when installed, else the Debian packages
  ``wordnet-base`` + ``wordnet-sense-index`` (/usr/share/wordnet, or $ECGBATCH_WORDNET_DIR),
  laid out once as an NLTK corpus under ~/.cache/ecgbatch/nltk_data. Without either,
  ``meteor`` raises ``MeteorUnavailable`` and ``report_metrics`` leaves METEOR out, saying why.
- Clinical efficacy (CE) F1: findings read from both texts by ``ecgbatch.text.findings``
  (negation-aware keyword matcher), per-finding F1 over items, macro F1 per group (CE-Rhythm,
  CE-Form, CE-Disease) over the findings that occur in the references, and overall.

ECG-Chat's own report-evaluation code was never published (ecg-chat-reference.md section 7), so
these are documented choices, not a copy; ``PAPER`` holds its reported numbers for comparison.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from ecgbatch.text.findings import GROUPS, KEYS, group_keys, positive_findings

# ECG-Chat (+DDP), PTB-XL report generation, Table II as quoted in ecg-chat-reference.md 9.
PAPER = {"model": "ECG-Chat + DDP (Vicuna-13B, ECG-CoCa, 45k ECG-Instruct; PTB-XL test, "
                  "GPT-4o-translated reports)",
         "bleu1": 32.27, "bleu4": 11.19, "rouge_l": 29.93, "meteor": 35.10,
         "ce_rhythm_f1": 43.39, "ce_form_f1": 17.35, "ce_disease_f1": 22.33}
PAPER_NO_DDP = {"bleu1": 15.91, "bleu4": 2.32, "rouge_l": 23.87, "meteor": 29.39,
                "ce_rhythm_f1": 13.04, "ce_form_f1": 0.98, "ce_disease_f1": 1.76}


class MeteorUnavailable(RuntimeError):
    """No WordNet database found for METEOR."""


def _check(preds, refs) -> tuple[list[str], list[str]]:
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"need one reference per prediction, got {len(preds)} predictions and "
                         f"{len(refs)} references")
    if not preds:
        raise ValueError("no texts to score")
    for name, xs in (("prediction", preds), ("reference", refs)):
        bad = [i for i, x in enumerate(xs) if not isinstance(x, str)]
        if bad:
            raise ValueError(f"{name} {bad[0]} is not a string: {xs[bad[0]]!r}")
    return [p.lower() for p in preds], [r.lower() for r in refs]


def bleu(preds, refs, max_order: int = 4) -> float:
    """sacrebleu corpus BLEU (0-100) with n-grams up to ``max_order``."""
    from sacrebleu.metrics import BLEU

    p, r = _check(preds, refs)
    return float(BLEU(max_ngram_order=max_order).corpus_score(p, [r]).score)


def rouge_l(preds, refs) -> float:
    """Mean ROUGE-L F-measure (0-100), rouge-score without stemming."""
    from rouge_score import rouge_scorer

    p, r = _check(preds, refs)
    with _absl_side_effects_undone():
        sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(np.mean([sc.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(p, r)]) * 100)


@contextmanager
def _absl_side_effects_undone():
    """Undo what rouge-score's absl logging does to the host process. (1) absl's first log call
    runs logging.basicConfig() on a bare root logger: a handler bound to the sys.stderr of that
    moment, removed again. (2) absl's handler, made at absl's import, keeps the sys.stderr of
    that moment and closes it when logging's handlers are shut down (vLLM's
    logging.config.dictConfig does that on import) unless it is the sys.stderr of then: a
    redirected stderr (a test's capture, a notebook's stream) was closed under its owner ('lost
    sys.stderr'). Pointed at sys.__stderr__, it never closes it."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        if root.handlers[:len(before)] == before:
            for h in root.handlers[len(before):]:
                root.removeHandler(h)
        from absl import logging as absl_logging

        handler = absl_logging.get_absl_handler().python_handler
        if handler.stream is not sys.__stderr__ and sys.__stderr__ is not None:
            handler.setStream(sys.__stderr__)


_TOKEN = re.compile(r"\w+|[^\w\s]")

# WordNet 3.0's lexicographer files (lexnames(5WN)): the one file of the NLTK corpus layout that
# the Debian packages do not install (they document it in the lexnames(5WN) manual page).
_LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
             "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
             "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
             "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
             "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
             "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
             "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
_WN_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
             "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense")


def _nltk_corpus_from(dict_dir: Path) -> Path:
    """A WordNet 3.0 ``dict`` folder laid out (copied once) as an NLTK data folder."""
    root = Path(os.environ.get("ECGBATCH_CACHE", Path.home() / ".cache" / "ecgbatch")) / "nltk_data"
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():     # lexnames is written last: its presence = complete
        tmp = target.with_name(f"wordnet.tmp-{os.getpid()}")    # one per process: two may build it
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for f in _WN_FILES:
                shutil.copy(dict_dir / f, tmp / f)
            cat = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
            (tmp / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{cat[n.split('.')[0]]}\n"
                                                  for i, n in enumerate(_LEXNAMES)))
            if not (target / "lexnames").is_file():
                shutil.rmtree(target, ignore_errors=True)
                try:
                    tmp.rename(target)
                except OSError:                    # another process renamed its copy first
                    if not (target / "lexnames").is_file():
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


@lru_cache(maxsize=1)
def wordnet():
    """NLTK's WordNet reader, or MeteorUnavailable saying how to install the data."""
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        candidates = [Path(os.environ["ECGBATCH_WORDNET_DIR"])] if os.environ.get("ECGBATCH_WORDNET_DIR") else []
        candidates.append(Path("/usr/share/wordnet"))
        dict_dir = next((d for d in candidates if all((d / f).is_file() for f in _WN_FILES)), None)
        if dict_dir is None:
            raise MeteorUnavailable(
                "METEOR needs the WordNet 3.0 database and none was found: install NLTK's 'wordnet' "
                "corpus, or the Debian packages wordnet-base and wordnet-sense-index "
                "(apt-get install wordnet-base wordnet-sense-index), or set ECGBATCH_WORDNET_DIR "
                "to a WordNet 3.0 dict folder that has index.sense") from None
        nltk.data.path.insert(0, str(_nltk_corpus_from(dict_dir)))
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30(WordNetCorpusReader):
        """NLTK's reader, English only: NLTK maps synsets of "wordnet" (3.0) onto the loaded
        version for the multilingual data, re-reading index.sense, even when the loaded version
        is 3.0 itself (an identity map that takes most of the load time). METEOR needs none."""

        def map_wn(self, version="wordnet"):
            return None if self.get_version() == "3.0" else super().map_wn(version)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "multilingual functions are not available" (no OMW)
        return WordNet30(nltk.data.find("corpora/wordnet"), None)


def meteor(preds, refs) -> float:
    """Mean NLTK METEOR (0-100) over items."""
    from nltk.translate.meteor_score import meteor_score

    p, r = _check(preds, refs)
    wn = wordnet()
    return float(np.mean([meteor_score([_TOKEN.findall(ref)], _TOKEN.findall(pred), wordnet=wn)
                          for pred, ref in zip(p, r)]) * 100)


def f1(tp: int, fp: int, fn: int) -> float:
    """F1 (0-100); NaN when the finding is in neither texts (undefined, left out of averages)."""
    d = 2 * tp + fp + fn
    return 100.0 * 2 * tp / d if d else float("nan")


def clinical_f1(preds, refs, keys=KEYS) -> dict:
    """Per-finding (tp, fp, fn, support, F1) and macro F1 per CE group and overall. A finding
    counts in the macro averages only when some reference has it (support > 0)."""
    p, r = _check(preds, refs)
    pf = [positive_findings(t, keys) for t in p]
    rf = [positive_findings(t, keys) for t in r]
    per = {}
    for k in keys:
        tp = sum(k in a and k in b for a, b in zip(pf, rf))
        fp = sum(k in a and k not in b for a, b in zip(pf, rf))
        fn = sum(k not in a and k in b for a, b in zip(pf, rf))
        per[k] = {"tp": tp, "fp": fp, "fn": fn, "support": tp + fn, "f1": f1(tp, fp, fn)}
    out = {"per_finding": per}
    for g in GROUPS + ("all",):
        ks = [k for k in (keys if g == "all" else group_keys(g)) if k in per and per[k]["support"] > 0]
        out[f"ce_{g}_f1"] = float(np.mean([per[k]["f1"] for k in ks])) if ks else float("nan")
        out[f"ce_{g}_findings"] = ks
    return out


def report_metrics(preds, refs, with_meteor: bool = True) -> dict:
    """All metrics in one dict (0-100). METEOR is None, with ``meteor_skipped`` saying why,
    when no WordNet is installed."""
    out = {"n": len(_check(preds, refs)[0]), "bleu1": bleu(preds, refs, 1), "bleu4": bleu(preds, refs, 4),
           "rouge_l": rouge_l(preds, refs), "meteor": None}
    if with_meteor:
        try:
            out["meteor"] = meteor(preds, refs)
        except MeteorUnavailable as exc:
            out["meteor_skipped"] = str(exc)
    else:
        out["meteor_skipped"] = "not requested"
    out.update(clinical_f1(preds, refs))
    return out


_ROWS = (("BLEU-1", "bleu1"), ("BLEU-4", "bleu4"), ("ROUGE-L", "rouge_l"), ("METEOR", "meteor"),
         ("CE-Rhythm F1", "ce_rhythm_f1"), ("CE-Form F1", "ce_form_f1"), ("CE-Disease F1", "ce_disease_f1"),
         ("CE macro F1 (all findings)", "ce_all_f1"))


def comparison_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(metric, ours, ECG-Chat +DDP, ECG-Chat no DDP) rows for a table."""
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.2f}"
    return [(name, fmt(res.get(k)), fmt(PAPER.get(k)), fmt(PAPER_NO_DDP.get(k))) for name, k in _ROWS]
