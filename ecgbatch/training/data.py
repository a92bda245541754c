"""Training data around a PairSet: patient-level splits with no leakage, class-balanced and
deterministic epoch orders, texts fitted to the tokenizer so the measurement suffix is never
truncated away, and the augmented batch for one worker of one step.

Batches are cut from one global order per epoch, and each worker takes its contiguous slice
of the global batch: the global batch (and so the gathered contrastive loss) is the same for 1
or N workers, and a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from ecgbatch.text.labels import keyword_labels
from ecgbatch.training.augment import AugmentConfig, augment, sample_rng
from ecgbatch.training.texts import join_statements, with_wave_suffix


def stable_int(*parts) -> int:
    """A seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _group_cells(groups: list[str], strata: list[str], labels: list[int] | None):
    """[(stratum, label, sorted groups)] in a fixed order: each group (patient) in the stratum
    of its records (two strata for one group raise) with label = max over its records."""
    n = len(groups)
    if len(strata) != n or (labels is not None and len(labels) != n):
        raise ValueError(f"groups, strata and labels must have one entry per record, got "
                         f"{n}, {len(strata)}, {None if labels is None else len(labels)}")
    group_stratum: dict[str, str] = {}
    group_label: dict[str, int] = {}
    for i, g in enumerate(groups):
        if group_stratum.setdefault(g, strata[i]) != strata[i]:
            raise ValueError(f"group {g!r} appears in two strata ({group_stratum[g]!r}, {strata[i]!r})")
        group_label[g] = max(group_label.get(g, 0), int(labels[i]) if labels is not None else 0)
    return [(stratum, lab, sorted(g for g, s in group_stratum.items() if s == stratum and group_label[g] == lab))
            for stratum in sorted(set(strata))
            for lab in sorted({group_label[g] for g, s in group_stratum.items() if s == stratum})]


def group_strata(groups: list[str], strata: list[str]) -> list[str]:
    """Each record's stratum replaced by the first stratum its group (patient) appears in, so a
    patient with records in two sources (e.g. two PTB-XL folders) is split as one."""
    if len(groups) != len(strata):
        raise ValueError(f"groups and strata differ in length: {len(groups)} vs {len(strata)}")
    first: dict[str, str] = {}
    for g, s in zip(groups, strata):
        first.setdefault(g, s)
    return [first[g] for g in groups]


def split_by_group(groups: list[str], strata: list[str], val_fraction: float | dict[str, float],
                   seed: int = 0, labels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train/val indices with every group (patient) on one side only.

    Within each stratum (the data source) the groups are split separately, and within a stratum
    separately per label (a group's label = max over its records), so every source with at least
    two groups and every label of it lands in both sides. ``val_fraction`` may be a dict per
    stratum (key "default" for the rest). Deterministic in ``seed``."""
    cells = _group_cells(groups, strata, labels)
    val_groups: set[str] = set()
    for stratum, lab, gs in cells:
        frac = val_fraction.get(stratum, val_fraction.get("default", 0.0)) \
            if isinstance(val_fraction, dict) else float(val_fraction)
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"val fraction for {stratum!r} must be in [0, 1), got {frac!r}")
        rng = np.random.default_rng(stable_int(seed, stratum, lab))
        k = int(round(frac * len(gs)))
        if frac > 0 and k == 0 and len(gs) >= 2:
            k = 1
        val_groups.update(gs[j] for j in rng.permutation(len(gs))[:k])
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def kfold_by_group(groups: list[str], strata: list[str], folds: int, fold: int, seed: int = 0,
                   labels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train/val indices of fold ``fold`` of a ``folds``-fold cross-validation by group
    (patient): within each stratum and label the groups are shuffled (seeded) and dealt to the
    folds in turn, so over all folds every record is held out exactly once, every group stays
    on one side, and each fold gets its share of every source and label."""
    if not (isinstance(folds, int) and folds >= 2 and isinstance(fold, int) and 0 <= fold < folds):
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got folds={folds!r}, fold={fold!r}")
    cells = _group_cells(groups, strata, labels)
    val_groups: set[str] = set()
    offset = 0   # continue dealing across strata/labels so small classes spread over the folds
    for stratum, lab, gs in cells:
        rng = np.random.default_rng(stable_int(seed, stratum, lab, "kfold"))
        for j, gi in enumerate(rng.permutation(len(gs))):
            if (offset + j) % folds == fold:
                val_groups.add(gs[gi])
        offset += len(gs)
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def balance_weights(texts: list[str], sources: list[str], keys: list[str]) -> np.ndarray:
    """Sampling weight per pair = product over ``keys`` of 1 / frequency of the pair's value:
    "source" balances data sets, a KEYWORD_LABELS name (e.g. "af") balances that label (read
    from the diagnosis text). Normalised to sum to 1."""
    if len(texts) != len(sources):
        raise ValueError(f"texts and sources differ in length: {len(texts)} vs {len(sources)}")
    w = np.ones(len(texts))
    for key in keys:
        if key == "source":
            vals = list(sources)
        else:
            vals = [keyword_labels(t, [key])[key] for t in texts]
        counts = Counter(vals)
        w *= np.array([1.0 / counts[v] for v in vals])
    return w / w.sum()


def epoch_order(n: int, epoch: int, seed: int, weights: np.ndarray | None = None,
                num_samples: int | None = None) -> np.ndarray:
    """The global sample order of one epoch: a permutation (no weights) or a weighted draw
    with replacement. Deterministic in (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    m = n if num_samples is None else int(num_samples)
    if weights is None:
        if m > n:
            return np.concatenate([rng.permutation(n) for _ in range(-(-m // n))])[:m]
        return rng.permutation(n)[:m]
    return rng.choice(n, size=m, replace=True, p=weights)


def steps_per_epoch(n_samples: int, global_batch: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as ECG-Chat does)."""
    return n_samples // global_batch


def local_slice(global_batch: int, rank: int, world: int) -> slice:
    """This worker's contiguous share of a global batch."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} must be divisible by the number of workers {world}")
    per = global_batch // world
    return slice(rank * per, (rank + 1) * per)


def fit_texts(base: list[str], waves: list[str] | None, count_tokens, max_tokens: int) -> list[str]:
    """Texts of at most ``max_tokens`` tokens that keep the whole measurement suffix: trailing
    statements of the diagnosis are dropped (never the suffix) until the text fits."""
    out = []
    for i, t in enumerate(base):
        w = waves[i] if waves is not None else None
        statements = t.split(". ")
        while True:
            cand = with_wave_suffix(join_statements(statements), w)
            if count_tokens(cand) <= max_tokens or len(statements) <= 1:
                out.append(cand)
                break
            statements = statements[:-1]
    return out


def token_counter(hf_tokenizer):
    """count_tokens(text) for an ecgbatch HFTokenizer (special tokens included)."""
    tok = hf_tokenizer.tokenizer
    return lambda text: len(tok(text, add_special_tokens=True)["input_ids"])


def augmented_batch(x: np.ndarray, order: np.ndarray, positions: range, fs: float, cfg: AugmentConfig,
                    seed: int, epoch: int) -> np.ndarray:
    """x[order[p]] augmented for every global position p in ``positions`` ->
    float32 [len(positions), leads, samples]. The augmentation of position p depends only on
    (seed, epoch, p)."""
    return np.stack([augment(x[order[p]], fs, cfg, sample_rng(seed, epoch, p)) for p in positions]
                    ).astype(np.float32)


# Text variants (a text-side augmentation of ours, not ECG-Chat's): besides the full report with
# its measurement suffix, a pair may show the report alone, its first statement (the rhythm for
# LUDB and PTB-XL texts) alone, or that statement with the suffix. The model then also learns to
# match the short queries people type ("atrial fibrillation"), not only whole reports.
TEXT_VARIANTS = ("full", "no_wave", "first", "first_wave")


def variant_texts(base: list[str], waves: list[str] | None, kind: str) -> tuple[list[str], list[str] | None]:
    """(statement texts, suffixes) of one variant, ready for ``fit_texts``."""
    if kind not in TEXT_VARIANTS:
        raise ValueError(f"text variant must be one of {TEXT_VARIANTS}, got {kind!r}")
    first = kind in ("first", "first_wave")
    texts = [t.split(". ")[0] if first else t for t in base]
    return texts, (waves if kind in ("full", "first_wave") else None)


def choose_variants(positions, seed: int, epoch: int, probs: list[float]) -> np.ndarray:
    """Variant index for each global position of an epoch (keyed by (seed, epoch, position))."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"variant probabilities must be non-negative with a positive sum, got {probs!r}")
    p = p / p.sum()
    return np.array([np.random.default_rng([int(seed), int(epoch), int(q), 11]).choice(len(p), p=p)
                     for q in positions], dtype=int)
