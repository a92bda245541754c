"""Fitting linear probes (ecgbatch.encoders.probes) on a model's embeddings of labelled records.

Steps: the pair data of a training config (the same records, preprocessing and patient groups as
`ecgbatch train coca`, from its cache) -> ground truth per record from each source's own labels
(ecgbatch.encoders.label_sources: PTB-XL SCP codes, Challenge SNOMED codes, LUDB rhythm lines)
-> embeddings -> logistic regression whose L2 strength and per-label thresholds are chosen by
k-fold cross-validation by patient (ecgbatch.training.data.kfold_by_group) -> the final fit on
every record.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgbatch.encoders import label_sources as LS
from ecgbatch.encoders.probes import LinearProbe, fit_binary, fit_softmax, unit_rows
from ecgbatch.eval.metrics import choose_thresholds
from ecgbatch.models import load_model
from ecgbatch.signal.preprocess import preprocess as prep
from ecgbatch.training import texts as T
from ecgbatch.training.data import group_strata, kfold_by_group
from ecgbatch.training.job_config import load_job_config
from ecgbatch.training.pairs import (PairSet, TextSource, csv_by_key, find_ptbxl_row,
                                     resolve_path, split_record_sources)

L2_GRID = (0.01, 0.03, 0.1, 0.3)
MIN_POSITIVES = 5      # a label needs this many positive records (and >= 2 patients) to be trained


@dataclass
class ProbeData:
    """Records with ground truth for one label set. y: [N, C] 0/1 over the set's labels."""

    labelset: str
    labels: tuple[str, ...]
    emb: np.ndarray
    y: np.ndarray
    group: list[str]
    source: list[str]
    record_id: list[str]
    left_out: dict = field(default_factory=dict)   # source -> records without truth for this set

    def subset(self, idx) -> "ProbeData":
        idx = np.asarray(idx, int)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return ProbeData(self.labelset, self.labels, self.emb[idx], self.y[idx], pick(self.group),
                         pick(self.source), pick(self.record_id), dict(self.left_out))


# --- ground truth -------------------------------------------------------------------------

def _scp_classes(path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {(r.get("") or "").strip(): r for r in csv.DictReader(fh) if (r.get("") or "").strip()}


class SourceTruth:
    """The labels of set ``labelset`` that one pair source states for a record (None: nothing)."""

    def __init__(self, spec, labelset: str):
        self.spec, self.labelset = spec, labelset
        self.rows = self.scp_classes = None
        if spec.text == "ptbxl":
            self.rows = csv_by_key(resolve_path(spec.metadata), "ecg_id")
            self.scp_classes = _scp_classes(resolve_path(spec.statements))

    def labels(self, path: str, record_id: str) -> set[str] | None:
        if self.spec.text == "ptbxl":
            row = find_ptbxl_row(self.rows, path, record_id)
            if row is None:
                return None
            return LS.labels_from_scp(self.labelset, T.parse_scp_codes(row["scp_codes"]), self.scp_classes)
        if self.spec.text != "header":
            return None   # MIMIC reports and free tables carry no structured labels
        comments = T.hea_comments(path)
        codes = T.challenge_dx_codes(comments)
        if codes:
            return LS.labels_from_snomed(self.labelset, codes)
        rhythm = next((c.split(":", 1)[1] for c in comments if c.lower().startswith("rhythm:")), None)
        return LS.labels_from_rhythm_text(self.labelset, rhythm)


def truth_matrix(pairs, specs, labelset: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(y [N, C], keep [N] bool, left-out counts per source) for a PairSet built from ``specs``."""
    labels = LS.load_labelset(labelset).labels
    by_name = {s.name: SourceTruth(s, labelset) for s in specs}
    y = np.zeros((len(pairs), len(labels)), np.int8)
    keep = np.zeros(len(pairs), bool)
    left_out: dict[str, int] = {}
    for i, (src, path, rid) in enumerate(zip(pairs.source, pairs.path, pairs.record_id)):
        got = by_name[src].labels(path, rid) if src in by_name else None
        if got is not None and LS.is_exclusive(labelset):
            got = {LS.primary_label(labelset, got)} if got else None
        if got is None:
            left_out[src] = left_out.get(src, 0) + 1
            continue
        keep[i] = True
        for lab in got:
            y[i, labels.index(lab)] = 1
    return y, keep, left_out


def embed_pairs(model, pairs, batch: int = 64) -> np.ndarray:
    return np.concatenate([model.embed_ecgs(pairs.x[i:i + batch]) for i in range(0, len(pairs), batch)])


def probe_data(model, pairs, specs, labelset: str, batch: int = 64, emb: np.ndarray | None = None) -> ProbeData:
    """Embed the pairs that have ground truth for ``labelset`` (``emb``: the embeddings of all
    ``pairs``, computed once for several label sets)."""
    y, keep, left_out = truth_matrix(pairs, specs, labelset)
    if not keep.any():
        raise ValueError(f"no record of the training data states labels of {labelset!r}")
    sub = pairs.subset(np.flatnonzero(keep))
    emb = embed_pairs(model, sub, batch) if emb is None else np.asarray(emb)[keep]
    return ProbeData(labelset, LS.load_labelset(labelset).labels, emb, y[keep], list(sub.group),
                     list(sub.source), list(sub.record_id), left_out)


# --- fitting ------------------------------------------------------------------------------

def trainable_labels(data: ProbeData, min_positives: int = MIN_POSITIVES) -> tuple[str, ...]:
    out = []
    for j, lab in enumerate(data.labels):
        pos = data.y[:, j] == 1
        if pos.sum() >= min_positives and len({g for g, p in zip(data.group, pos) if p}) >= 2 \
                and (LS.is_exclusive(data.labelset) or (~pos).sum() >= min_positives):
            out.append(lab)
    return tuple(out)


def _fold_labels(data: ProbeData) -> list[int]:
    """A stratum label per record so every fold gets its share of each class (exclusive: the
    class; multi-label: the rarest positive label)."""
    counts = data.y.sum(axis=0)
    out = []
    for row in data.y:
        pos = np.flatnonzero(row)
        out.append(int(pos[np.argmin(counts[pos])]) if len(pos) else -1)
    return out


def folds_by_patient(data: ProbeData, folds: int, seed: int = 0):
    labs = _fold_labels(data)
    strata = group_strata(data.group, data.source)
    return [kfold_by_group(data.group, strata, folds, f, seed=seed, labels=labs) for f in range(folds)]


class _Standardiser:
    def __init__(self, f: np.ndarray):
        self.mean = f.mean(axis=0)
        self.scale = np.maximum(f.std(axis=0), 1e-6)


def _fit_raw(data: ProbeData, trained: tuple[str, ...], l2: float):
    """(mean, scale, W [K, D], b [K]) fitted on every record of ``data``."""
    f = unit_rows(data.emb)
    st = _Standardiser(f)
    z = (f - st.mean) / st.scale
    cols = [data.labels.index(t) for t in trained]
    if LS.is_exclusive(data.labelset):
        w, b = fit_softmax(z, np.argmax(data.y[:, cols], axis=1), len(cols), l2)
    else:
        fits = [fit_binary(z, data.y[:, c], l2) for c in cols]
        w, b = np.stack([w_ for w_, _ in fits]), np.array([b_ for _, b_ in fits])
    return st.mean, st.scale, w, b


def _make_probe(data, trained, l2, thresholds, model_info, info) -> LinearProbe:
    mean, scale, w, b = _fit_raw(data, trained, l2)
    return LinearProbe(data.labelset, data.labels, trained, LS.is_exclusive(data.labelset), mean, scale,
                       w, b, np.asarray(thresholds, np.float64), dict(model_info), dict(info))


def _log_loss(y: np.ndarray, p: np.ndarray, exclusive: bool) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    if exclusive:
        return float(-np.log((y * p).sum(axis=1)).mean())
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def out_of_fold(data: ProbeData, trained: tuple[str, ...], l2: float, splits) -> np.ndarray:
    """[N, K] probabilities of the trained labels, each record scored by the fit without its fold."""
    oof = np.zeros((len(data.y), len(trained)))
    half = np.full(len(trained), 0.5)
    for tr, va in splits:
        part = data.subset(tr)
        n_pos = {t: int(part.y[:, data.labels.index(t)].sum()) for t in trained}
        # a class absent from (or, multi-label, universal in) the training folds keeps p = 0 there
        present = tuple(t for t in trained if n_pos[t] > 0 and
                        (LS.is_exclusive(data.labelset) or n_pos[t] < len(part.y)))
        if not present:
            continue
        if LS.is_exclusive(data.labelset):
            part = part.subset(np.flatnonzero(part.y[:, [data.labels.index(t) for t in present]].any(axis=1)))
        probe = _make_probe(part, present, l2, half[:len(present)], {}, {})
        p = probe.trained_probabilities(data.emb[va])
        oof[np.ix_(va, [trained.index(t) for t in present])] = p
    return oof


def fit_probe(data: ProbeData, model_info: dict, folds: int = 5, seed: int = 0, l2_grid=L2_GRID,
              min_positives: int = MIN_POSITIVES) -> LinearProbe:
    """The probe of ``data``'s label set: L2 strength by cross-validated log-loss, thresholds
    maximising each label's out-of-fold F1, then one fit on every record."""

    trained = trainable_labels(data, min_positives)
    if not trained or (LS.is_exclusive(data.labelset) and len(trained) < 2):
        raise ValueError(f"label set {data.labelset!r}: too few labelled records to train any label "
                         f"(need >= {min_positives} positives from >= 2 patients)")
    cols = [data.labels.index(t) for t in trained]
    positives = {lab: int(data.y[:, j].sum()) for j, lab in enumerate(data.labels)}
    no_label_by_source = dict(data.left_out)
    n_untrained = int((~data.y[:, cols].any(axis=1)).sum()) if LS.is_exclusive(data.labelset) else 0
    if LS.is_exclusive(data.labelset):   # records of an untrained rhythm cannot be fitted
        data = data.subset(np.flatnonzero(data.y[:, cols].any(axis=1)))
    splits = folds_by_patient(data, folds, seed)
    y = data.y[:, cols].astype(float)
    oofs = {l2: out_of_fold(data, trained, l2, splits) for l2 in l2_grid}
    losses = {l2: _log_loss(y, p, LS.is_exclusive(data.labelset)) for l2, p in oofs.items()}
    best = min(losses, key=losses.get)
    thr = choose_thresholds(y.astype(int), oofs[best])
    info = {"records": len(data.y), "patients": len(set(data.group)),
            "records_by_source": {s: data.source.count(s) for s in sorted(set(data.source))},
            "no_label_by_source": no_label_by_source, "left_out_untrained_label": n_untrained,
            "positives": positives,
            "min_positives": min_positives, "folds": folds, "seed": seed, "l2": best,
            "cv_log_loss": {str(k): round(v, 5) for k, v in losses.items()},
            "features": "L2-normalised embedding, standardised per dimension"}
    return _make_probe(data, trained, best, thr, model_info, info)


# --- the job ------------------------------------------------------------------------------

DEFAULT_CONFIG = "configs/coca-mini.yaml"


def labelled_records(specs, preprocess, progress=None, part: str = "train"):
    """A PairSet of every readable record of one part of ``specs`` ("train": the test fold left
    out, "test": only it; ``ecgbatch.training.pairs.split_record_sources``), with signals
    preprocessed for the model, record ids and patient groups, without the waveform measurements
    and texts that training needs: a probe needs only the embedding and the source's labels.
    Unreadable records raise."""

    xs, cols = [], {k: [] for k in ("record_id", "source", "group", "path")}
    for spec, sources in split_record_sources(specs, part):
        text = TextSource(spec)
        for rs in sources:
            rec = rs.read(**(spec.read_options or {}))
            _, group = text.text_and_group(rs.path, rec)
            xs.append(prep(rec, preprocess).x)
            for k, v in (("record_id", str(rec.record_id or Path(rs.path).stem)), ("source", spec.name),
                         ("group", group), ("path", str(rs.path))):
                cols[k].append(v)
            if progress is not None:
                progress()
    if not xs:
        raise ValueError("no records in the data sources")
    n = len(xs)
    return PairSet(np.stack(xs).astype(np.float32), [""] * n, [""] * n, hr_bpm=np.full(n, np.nan, np.float32),
                   **cols)


def training_pairs(config: str | Path, preprocess, part: str = "train"):
    """(records of one part, source specs) of a training config's data section
    (ecgbatch.training.job_config); "train" leaves the test fold out."""

    specs = load_job_config(resolve_path(config)).data.sources
    if not specs:
        raise ValueError(f"training config {str(config)!r} lists no data sources")
    return labelled_records(specs, preprocess, part=part), specs


def model_info(model, name: str) -> dict:
    return {"name": str(name), "weights_hash": str(model.weights_hash), "embed_dim": int(model.embed_dim)}


def probe_inputs(model: str, labelsets: list[str], config: str | Path):
    """(model, [ProbeData per label set]) of `train probe` and `eval classify`: the model ``model``
    names and its embeddings (one pass) of the labelled records of the training YAML ``config``
    (test fold left out) with each label set's truth. Raises ValueError / FileNotFoundError
    saying what is missing."""
    bad = [ls for ls in labelsets if ls not in LS.supported_labelsets()]
    if bad or not labelsets:
        raise ValueError(f"no mapping from the data's labels to {bad or labelsets!r}; probes can be fitted for "
                         f"{LS.supported_labelsets()}")
    m = load_model(model)[0]
    pairs, specs = training_pairs(config, m.preprocess_config)
    emb = embed_pairs(m, pairs)
    return m, [probe_data(m, pairs, specs, ls, emb=emb) for ls in labelsets]
