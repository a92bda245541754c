"""`ecgbatch search`: text-to-ECG and ECG-to-ECG retrieval over a workspace's index.

Text queries go through the same model's text tower, as typed. Options for a query that names a
label of a built-in zero-shot label set (its code, e.g. "AFIB", or the first phrase of its
prompt, e.g. "atrial fibrillation"):

- ``expand``: ensemble it with that label's prompts (the mean of the L2-normalised text
  embeddings, renormalised: the zero-shot classifier's rule);
- ``contrast``: rank it against the normal class of that label set (SR for a rhythm, NORM
  otherwise): the query vector becomes normalise(q - c), c the normal class's prompts;
- ``versus``: rank it against any other text.

A query that names a label the table's model has a trained linear probe for (ecg-coca-mini:
the ptbxl-rhythm rhythms, e.g. "atrial fibrillation", "sinus bradycardia") is ranked by that
probe's calibrated probability of the label (the score column is then the probability), unless
``probe=False`` (CLI ``--no-probe``) or one of the options below is given. On the shipped model's
embeddings of the 456 shared records with a stated rhythm, each scored by a probe fitted without
its patients, the top-8 precision of "atrial fibrillation" on pools of 100 with 8 AF was 0.96 by
probe vs 0.91 by the text (LUDB 1.00 vs 0.90, Challenge 0.88 vs 0.54); the encoder itself was
trained on these records, so both figures flatter unseen data (MODEL_CARD.md).

None of the options is the default. For "atrial fibrillation" with ecg-coca-mini, on the 100 LUDB records
held out by the 5-fold cross-validation (10 AF; pools of 98 with 8 AF), the top-8 precision was
0.875 as typed, 0.756 expanded and 0.641 expanded + contrasted (AUC 0.984 / 0.983 / 0.977); over
all 477 held-out records the three were within noise (0.652 / 0.666 / 0.671). MODEL_CARD.md.
``like`` finds ECGs similar to an embedded record (by record id) or to any ECG file (read,
preprocessed and encoded here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgbatch.encoders.zeroshot import BUILTIN, load_labelset
from ecgbatch.io import read_record
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.classify import load_probe_for, table_probe
from ecgbatch.pipelines.table_model import load_table_model
from ecgbatch.pipelines.workspace import ModelTable
from ecgbatch.signal import preprocess

RESULT_COLUMNS = ("rank", "score", "record_id", "source", "age", "sex", "diagnoses", "quality")


def _norm(s: str) -> str:
    return " ".join(s.lower().replace("-", " ").split())


# The normal class of each built-in label set: what `--contrast` ranks a query naming one of its
# other labels against (ptbxl-form has none).
NORMAL_LABEL = {"ptbxl-rhythm": "SR", "ptbxl-super": "NORM", "ptbxl-sub": "NORM", "cpsc2018": "NORM"}


def _first_phrase(prompt: str) -> str:
    return prompt.split(",")[0].split(":")[0].strip()


def query_prompts(text: str) -> tuple[list[str], list[str]]:
    """(prompts to ensemble, "labelset:LABEL" names matched) for a text query."""
    q = _norm(text)
    if not q:
        raise ValueError(f"empty text query {text!r}")
    prompts, matched = [text], []
    for name in BUILTIN:
        ls = load_labelset(name)
        for label, ps in zip(ls.labels, ls.prompts):
            first = {_norm(_first_phrase(p)) for p in ps}
            if q == _norm(label) or q in first:
                matched.append(f"{name}:{label}")
                prompts.extend(p for p in ps if p not in prompts)
    return prompts, matched


def contrast_prompts(matched: list[str]) -> list[str]:
    """The prompts of the normal classes of the label sets a query matched (none when the
    query is itself a normal class, or matched nothing): what `search --contrast` subtracts."""
    if any(NORMAL_LABEL.get(m.split(":", 1)[0]) == m.split(":", 1)[1] for m in matched):
        return []
    out: list[str] = []
    for m in matched:
        name = m.split(":", 1)[0]
        normal = NORMAL_LABEL.get(name)
        if normal is None:
            continue
        ls = load_labelset(name)
        for p in ls.prompts[ls.labels.index(normal)]:
            for c in (_first_phrase(p).lower(), p):
                if c and c not in out:
                    out.append(c)
    return out


def _mean_unit(model, prompts: list[str]) -> np.ndarray:
    v = model.embed_texts(prompts, normalize=True).mean(axis=0)  # [P, D] -> [D]
    return v / max(float(np.linalg.norm(v)), 1e-12)


def text_vector(model, text: str, expand: bool = False, contrast: bool = False, versus: str | None = None
                ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(query vector, prompts ensembled, labels matched, contrast prompts subtracted)."""
    expanded, matched = query_prompts(text)
    prompts = expanded if expand else [text]
    v = _mean_unit(model, prompts)
    if versus is not None:
        counter = query_prompts(versus)[0] if expand else [versus]
    else:
        counter = contrast_prompts(matched) if contrast else []
    if counter:
        v = v - _mean_unit(model, counter)
        n = float(np.linalg.norm(v))
        if n < 1e-6:
            raise ValueError(f"the query {text!r} and its contrast {counter[0]!r} embed to the same vector")
        v = v / n
    return v.astype(np.float32), prompts, matched, counter


def record_vector(model, path: str) -> np.ndarray:
    """Read, preprocess (the model's PreprocessConfig) and encode one ECG file."""
    rec = read_record(path)
    x = preprocess(rec, model.preprocess_config).x
    return model.embed_ecgs(x[None])[0]


@dataclass
class SearchResult:
    table: str
    query: str
    mode: str                    # "text" | "like-id" | "like-file"
    k: int
    where: str | None
    prompts: list[str] = field(default_factory=list)
    matched_labels: list[str] = field(default_factory=list)
    contrast: list[str] = field(default_factory=list)
    hits: list[dict[str, Any]] = field(default_factory=list)
    ranked_by: str = "vector"        # "vector" (cosine) | "probe:<labelset>:<LABEL>" (probability)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "query": self.query, "mode": self.mode, "k": self.k,
                "where": self.where, "prompts": self.prompts, "matched_labels": self.matched_labels,
                "contrast": self.contrast, "ranked_by": self.ranked_by, "notes": self.notes,
                "hits": self.hits}


def probe_for_query(table: ModelTable, matched: list[str]):
    """((probe, "labelset:LABEL") of the first matched label that the table's model has a trained
    probe for, or None; the matched labels its probes list as untrained)."""
    untrained = []
    for m in matched:
        name, label = m.split(":", 1)
        path = table_probe(table, name)
        if path is None:
            continue
        probe = load_probe_for(table, path)
        if label in probe.trained:
            return (probe, m), untrained
        untrained.append(m)
    return None, untrained


def _hit_row(rank: int, h) -> dict[str, Any]:
    m = h.metadata
    diag = m.get("diagnoses") or ", ".join(m.get("labels") or [])
    age = m.get("age")
    return {"rank": rank, "score": round(float(h.score), 4), "record_id": h.record_id,
            "source": m.get("source"), "age": None if age is None else float(age),
            "sex": m.get("sex"), "diagnoses": diag,
            # reader flags (flat/NaN leads, absurd amplitude, ...): a hit to look at with care
            "quality": ", ".join(m.get("quality") or [])}


def search(table: ModelTable, query: str | None = None, *, like: str | None = None, k: int = 10,
           where: str | None = None, model=None, expand: bool = False, contrast: bool = False,
           versus: str | None = None, probe: bool = True) -> SearchResult:
    """Top-``k`` records for a text ``query`` or ``like`` a record id / ECG file. ``expand``,
    ``contrast`` and ``versus`` shape a text query; ``probe`` ranks a query naming a probed
    label by the probe's probability (module docstring)."""
    from ecgbatch.index import EcgIndex, ModelSignature

    if (query is None) == (like is None):
        raise ValueError("give exactly one of a text query or like=RECORD_OR_ID")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if (versus is not None or expand or contrast) and query is None:
        raise ValueError("expand, contrast and versus shape a text query; they do not apply to like=")
    meta = table.read_meta()
    idx = EcgIndex.load(table.index_dir)
    sig = {"model": meta["model"], "weights_hash": meta["weights_hash"], "dim": int(meta["dim"])}
    exclude = None
    res = SearchResult(str(table.root), query if query is not None else str(like), "text", k, where)
    if query is not None and probe and not (expand or contrast or versus is not None):
        found, unseen = probe_for_query(table, query_prompts(query)[1])
        res.notes += [f"{m} never occurred in the model's probe training data: ranked by the text, "
                      f"which the model has not learned to match" for m in unseen]
        if found is not None:
            lp, res.ranked_by = found[0], f"probe:{found[1]}"
            j = lp.trained.index(found[1].split(":", 1)[1])
            res.prompts, res.matched_labels = [query], query_prompts(query)[1]
            hits = idx.search_by_score(lambda v: lp.trained_probabilities(v)[:, j], k=k, where=where)
            res.hits = [_hit_row(i + 1, h) for i, h in enumerate(hits)]
            return res
    if query is not None:
        model = model or load_table_model(table)
        vec, res.prompts, res.matched_labels, res.contrast = text_vector(model, query, expand, contrast, versus)
        qsig = ModelSignature(**sig)  # text vectors: no preprocessing involved
    elif like in set(idx.record_ids):
        vec = np.asarray(idx.vectors[idx.row_of(like)], dtype=np.float32)
        exclude, res.mode = like, "like-id"
        qsig = ModelSignature(**sig, preprocess_hash=meta["preprocess_hash"])
    elif Path(like).exists():
        model = model or load_table_model(table)
        vec = record_vector(model, like)
        res.mode = "like-file"
        qsig = ModelSignature(**sig, preprocess_hash=model.preprocess_config.hash())
    else:
        raise ValueError(f"--like {like!r} is neither a record id in {table.root} nor an existing file")
    hits = idx.search(vec[None], k=k + (exclude is not None), where=where, model=qsig)[0]
    hits = [h for h in hits if h.record_id != exclude][:k]
    res.hits = [_hit_row(i + 1, h) for i, h in enumerate(hits)]
    return res


def plot_hits(result: SearchResult, out_dir: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """One 12-lead plot per hit (ecgbatch.signal.plot) in ``out_dir``. Returns (files written,
    [(record id, reason)] for hits that cannot be drawn on ECG paper, e.g. z-scored signals)."""
    from ecgbatch.signal.plot import plot_ecg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, skipped = [], []
    for h in result.hits:
        source = src.source_from_json(src.source_to_json(h["source"]))
        with src.local_source(source) as local:
            rec = read_record(local.path, index=local.index)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in h["record_id"])
        try:
            files.append(plot_ecg(rec, out / f"{h['rank']:02d}_{name}.png",
                                  title=f"#{h['rank']} {h['record_id']} (score {h['score']:.3f})"))
        except ValueError as exc:
            skipped.append((h["record_id"], str(exc)))
    return files, skipped
