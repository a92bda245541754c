"""ECG <-> report retrieval, ECG-Chat's protocol (ecg-chat-reference.md 5.1): L2-normalised
ECG and text embeddings of N pairs, the full N x N similarity matrix (no subsampling, no
de-duplication of identical reports), for each direction the 0-based rank of the true
partner, R@K = mean(rank < K), mean rank = mean(rank) + 1, median rank = floor(median) + 1.

Ties rank like a stable descending argsort (the lower index first), as ECG-Chat's argsort
does. Ranks are computed by counting, in row chunks, so large N needs no N x N argsort.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_KS = (1, 5, 10)


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, dim], got shape {a.shape!r}")
    return a


def true_ranks(query: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """0-based rank of keys[i] among all keys for query[i] (similarity = dot product)."""
    q, k = _as_2d(query, "query"), _as_2d(keys, "keys")
    if q.shape != k.shape:
        raise ValueError(f"query and keys must have the same shape, got {q.shape!r} and {k.shape!r}")
    n = q.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        sim = q[s:s + chunk] @ k.T                      # [c, N]
        rows = np.arange(sim.shape[0])
        own = sim[rows, s + rows][:, None]
        higher = (sim > own).sum(1)
        cols = np.arange(n)[None, :]
        ties_before = ((sim == own) & (cols < (s + rows)[:, None])).sum(1)
        ranks[s:s + chunk] = higher + ties_before
    return ranks


def rank_metrics(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(ranks < k)) for k in ks}
    out["mean_rank"] = float(ranks.mean() + 1)
    out["median_rank"] = float(math.floor(np.median(ranks)) + 1)
    return out


def retrieval_metrics(ecg_emb, text_emb, ks=DEFAULT_KS, normalize: bool = True) -> dict[str, dict[str, float]]:
    """{"ecg_to_text": {R@1, R@5, R@10, mean_rank, median_rank}, "text_to_ecg": {...}, "n": N}.
    Embeddings are L2-normalised first unless ``normalize=False`` (the logit scale of
    ECG-Chat's matrix does not change any rank, so it is left out)."""
    e, t = _as_2d(ecg_emb, "ecg_emb"), _as_2d(text_emb, "text_emb")
    if e.shape[0] < 1:
        raise ValueError("retrieval needs at least one pair")
    if normalize:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return {"ecg_to_text": rank_metrics(true_ranks(e, t), ks),
            "text_to_ecg": rank_metrics(true_ranks(t, e), ks), "n": int(e.shape[0])}


def flat_metrics(m: dict, prefix: str = "") -> dict[str, float]:
    """{"ecg_to_text": {"R@1": ..}} -> {"ecg_to_text/R@1": ..} (for logs and Ray reports)."""
    return {f"{prefix}{d}/{k}": v for d in ("ecg_to_text", "text_to_ecg") for k, v in m[d].items()}


def top_k(query_emb, keys_emb, k: int) -> np.ndarray:
    """Indices of the k keys most similar to one query (descending, stable on ties)."""
    q = np.asarray(query_emb, dtype=np.float64).reshape(-1)
    sim = _as_2d(keys_emb, "keys_emb") @ q
    return np.argsort(-sim, kind="stable")[:k]


def precision_at_k(query_emb, keys_emb, relevant, k: int) -> float:
    """Fraction of the top k keys that are relevant (``relevant``: 0/1 per key)."""
    rel = np.asarray(relevant).astype(bool)
    idx = top_k(query_emb, keys_emb, k)
    return float(rel[idx].mean()) if len(idx) else float("nan")


# --- embedding with a model (torch imported lazily) ----------------------------------------

def embed_ecgs(model, x: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Preprocessed ECGs [N, leads, samples] -> L2-normalised embeddings [N, embed_dim]."""
    import torch

    outs = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[s:s + batch_size], dtype=np.float32), device=device)
            outs.append(model.encode_ecg(xb).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.embed_dim), np.float32)


def embed_texts(model, tokenizer, texts: list[str], batch_size: int = 64, device: str = "cpu",
                lower: bool = True) -> np.ndarray:
    """Texts -> L2-normalised embeddings [N, embed_dim] (lower-cased like training text)."""
    import torch

    outs = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            ids = tokenizer(list(texts[s:s + batch_size]), lower=lower).to(device)
            outs.append(model.encode_text(ids).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.embed_dim), np.float32)


def precision_at_k_at_prevalence(query_emb, keys_emb, relevant, k: int, prevalence: float, n: int | None = None,
                                 trials: int = 200, seed: int = 0) -> dict[str, float]:
    """Top-k precision of a query on random pools with a fixed share of relevant keys: each
    trial keeps all irrelevant keys (or ``n`` in total) and draws relevant ones so that they make
    ``prevalence`` of the pool. Mean, 10th percentile and minimum over ``trials`` pools."""
    rel = np.asarray(relevant).astype(bool)
    pos, neg = np.flatnonzero(rel), np.flatnonzero(~rel)
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence!r}")
    n_neg = len(neg) if n is None else int(round(n * (1 - prevalence)))
    n_pos = max(1, int(round(n_neg * prevalence / (1 - prevalence))))
    if n_pos > len(pos) or n_neg > len(neg):
        raise ValueError(f"need {n_pos} relevant and {n_neg} other keys, have {len(pos)} and {len(neg)}")
    keys = _as_2d(keys_emb, "keys_emb")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(trials):
        pool = np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
        vals.append(float(rel[pool][top_k(query_emb, keys[pool], k)].mean()))
    v = np.array(vals)
    return {"mean": float(v.mean()), "p10": float(np.percentile(v, 10)), "min": float(v.min()),
            "pool": int(n_pos + n_neg), "relevant_in_pool": int(n_pos), "trials": int(trials)}
