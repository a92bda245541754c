"""Search correctness against brute-force numpy, on real data: the 377 PTB-XL + CinC 2021
records of the shared data folder, embedded by a fixed random Gaussian projection of their
signals (ecgbatch.index.random_projection, D=256), with their real metadata for the filters.
IVF-PQ/HNSW recall is judged on clustered data made from those real vectors (each real vector a
cluster centre, noisy copies around it)."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.index import (
    GpuUnavailableError, IndexModelMismatchError, InvalidVectorError, ModelSignature, build_index,
    where_mask,
)
from ecgbatch.index.faiss_index import num_gpus


@pytest.fixture(scope="module")
def real(real_index_vectors):
    return real_index_vectors


def brute_force(q, v, k, mask=None):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = qn @ vn.T
    if mask is not None:
        s[:, ~mask] = -np.inf
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), top


def queries(v, n, seed=1, noise=0.3):
    rng = np.random.default_rng(seed)
    base = v[rng.choice(len(v), n)]
    return (base + noise * rng.standard_normal(base.shape) / np.sqrt(v.shape[1])).astype(np.float32)


@pytest.mark.parametrize("where", [
    None,
    "age >= 60 and sex == 'F'",
    "diagnoses contains 'fibrillation'",
    "has_code(dx_codes, '164889003') or dx_codes contains 'AFIB'",
    "not (sex == 'M') and age is not null",
])
@pytest.mark.parametrize("path", ["exact-subset", "faiss-selector"])
def test_flat_equals_brute_force(real, where, path):
    t, v = real
    idx = build_index(t, kind="flat")
    if path == "faiss-selector":
        idx.exact_max_rows, idx.exact_max_fraction = 0, 0.0  # force the IDSelector path
    q = queries(v, 20)
    k = 10
    mask = None if where is None else where_mask(t, where)
    want_s, want_i = brute_force(q, v, k, mask)
    hits = idx.search(q, k, where=where)
    got_i = np.array([[h.faiss_id for h in hh] for hh in hits])
    got_s = np.array([[h.score for h in hh] for hh in hits])
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    ids = t["record_id"].to_pylist()
    assert [h.record_id for h in hits[0]] == [ids[i] for i in want_i[0]]
    if mask is not None:  # every hit satisfies the filter, metadata comes back with it
        for hh in hits:
            assert all(mask[h.faiss_id] for h in hh)
        assert set(hits[0][0].metadata) >= {"age", "sex", "diagnoses", "dx_codes", "source"}


def test_cohort_smaller_than_k_gives_fewer_hits(real):
    t, v = real
    idx = build_index(t, kind="flat")
    mask = where_mask(t, "has_code(dx_codes, '164889003') and age >= 80")
    n_sel = int(mask.sum())
    assert 0 < n_sel < 10
    hits = idx.search(v[:3], 10, where="has_code(dx_codes, '164889003') and age >= 80")
    assert all(len(h) == n_sel for h in hits)
    s, i = idx.search_arrays(v[:3], 10, where="has_code(dx_codes, '164889003') and age >= 80")
    assert (i[:, n_sel:] == -1).all() and np.isneginf(s[:, n_sel:]).all()
    assert idx.search(v[:2], 5, where="age > 1000") == [[], []]


def clustered(v, copies, noise, seed=0):
    """Each real vector a cluster centre with ``copies`` noisy copies (cos to centre ~0.9)."""
    rng = np.random.default_rng(seed)
    x = np.repeat(v, copies, axis=0)
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(v.shape[1])
    return x.astype(np.float32)


def recall_at_k(got, want):
    return np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])


@pytest.fixture(scope="module")
def clustered_ivf(real):
    """~6k clustered vectors (16 noisy copies of each real vector), a flat and an IVF-PQ index
    over them (pq_m=16 keeps PQ training fast on 2 shared cores), and a rare metadata group."""
    t, v = real
    x = clustered(v, 16, 0.5)
    n = len(x)
    sig = ModelSignature("random-projection-ecg", "seed0", 256)
    ids = [f"c{i}" for i in range(n)]
    group = np.random.default_rng(5).choice(["a", "b"], size=n, p=[0.99, 0.01])
    flat = build_index(x, ids, kind="flat", model=sig)
    ivf = build_index(x, ids, kind="ivfpq", model=sig, pq_m=16, metadata={"group": group})
    return x, flat, ivf, group


def test_ivfpq_recall_against_flat(clustered_ivf):
    x, flat, ivf, _ = clustered_ivf
    assert ivf.kind == "ivfpq" and ivf.params.nlist > 1 and 256 % ivf.params.pq_m == 0
    q = queries(x, 200, seed=3, noise=0.3)
    _, want = flat.search_arrays(q, 10)
    s, got = ivf.search_arrays(q, 10)
    r = recall_at_k(got, want)
    assert r >= 0.9, f"IVF-PQ recall@10 {r:.3f}"
    # re-ranked scores are exact inner products of the returned vectors
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(s, np.einsum("qd,qkd->qk", qn, xn[got]), atol=1e-5)
    # without re-ranking (rerank=1) PQ scores are approximate: recall must not be better
    r1 = recall_at_k(ivf.search_arrays(q, 10, rerank=1)[1], want)
    assert r1 <= r + 1e-9


def test_ivfpq_selective_filter_with_selector_still_returns_k(clustered_ivf):
    """IVF + selector can find fewer than k members in the probed lists (here nprobe=1 and a
    1% group): the index widens nprobe / falls back to exact search, so every query still gets
    k hits, all inside the cohort, close to the exact cohort search."""
    x, _, ivf, group = clustered_ivf
    ivf.exact_max_rows, ivf.exact_max_fraction = 0, 0.0  # force the selector path
    try:
        q = queries(x, 30, seed=7)
        mask = group == "b"
        _, want_i = brute_force(q, x, 10, mask)
        s, i = ivf.search_arrays(q, 10, where="group == 'b'", nprobe=1)
    finally:
        ivf.exact_max_rows, ivf.exact_max_fraction = 20_000, 0.01
    assert (i >= 0).all()
    assert mask[i.ravel()].all()
    assert recall_at_k(i, want_i) >= 0.9


def test_hnsw_recall_and_filter(real):
    t, v = real
    x = clustered(v, 20, 0.5)
    sig = ModelSignature("m", "w", 256)
    ids = [str(i) for i in range(len(x))]
    h = build_index(x, ids, kind="hnsw", model=sig)
    q = queries(x, 100, seed=9)
    _, want = brute_force(q, x, 10)
    assert recall_at_k(h.search_arrays(q, 10)[1], want) >= 0.95
    sex = np.repeat(t["sex"].to_numpy(zero_copy_only=False), 20)
    h2 = build_index(x, ids, kind="hnsw", model=sig, metadata={"sex": sex})
    h2.exact_max_rows, h2.exact_max_fraction = 0, 0.0
    _, want = brute_force(q, x, 10, sex == "F")
    _, got = h2.search_arrays(q, 10, where="sex == 'F'")
    assert recall_at_k(got, want) >= 0.95 and (sex[got.ravel()] == "F").all()


def test_queries_from_another_model_or_dimension_are_refused(real):
    t, v = real
    idx = build_index(t, kind="flat")
    sig = idx.signature
    assert sig.model == "random-projection-ecg" and sig.dim == 256
    idx.search(v[:2], 3, model=sig)  # same space: fine
    idx.search(v[:2], 3, model={"model": sig.model, "weights_hash": sig.weights_hash, "dim": 256})
    other = ModelSignature(sig.model, "another-weights-hash", 256)
    with pytest.raises(IndexModelMismatchError, match="weights hash"):
        idx.search(v[:2], 3, model=other)
    with pytest.raises(IndexModelMismatchError, match="model"):
        idx.search(v[:2], 3, model=ModelSignature("ecg-coca", sig.weights_hash, 256))
    with pytest.raises(IndexModelMismatchError, match="dimension"):
        idx.search(v[:2, :128], 3)
    with pytest.raises(IndexModelMismatchError, match="preprocess"):
        idx.search(v[:2], 3, model=ModelSignature(sig.model, sig.weights_hash, 256, "other-prep"))


def test_bad_queries_are_refused(real):
    t, v = real
    idx = build_index(t, kind="flat")
    with pytest.raises(InvalidVectorError, match="zeros"):
        idx.search(np.zeros((1, 256), np.float32), 3)
    bad = v[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(InvalidVectorError, match="NaN"):
        idx.search(bad, 3)
    with pytest.raises(ValueError, match="k must be"):
        idx.search(v[:1], 0)
    # a single [D] vector is one query; vectors are normalised defensively
    assert len(idx.search(v[0] * 7.5, 3)) == 1
    assert idx.search(v[0] * 7.5, 1)[0][0].faiss_id == 0
    assert idx.search(v[0] * 7.5, 1)[0][0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.skipif(num_gpus() > 0, reason="this faiss sees a GPU: the CPU-only message is not shown")
def test_gpu_without_gpu_support_is_a_clear_error(real):
    t, _ = real
    with pytest.raises(GpuUnavailableError, match="gpu=False"):
        build_index(t, kind="flat", gpu=True)


@pytest.mark.gpu
@pytest.mark.skipif(num_gpus() == 0, reason="faiss has no GPU support or sees no CUDA device")
def test_gpu_search_matches_cpu(real):
    t, v = real
    cpu = build_index(t, kind="flat")
    gpu = build_index(t, kind="flat", gpu=True)
    q = queries(v, 10)
    np.testing.assert_array_equal(gpu.search_arrays(q, 10)[1], cpu.search_arrays(q, 10)[1])
    x = clustered(v, 16, 0.5)
    ids = [str(i) for i in range(len(x))]
    sig = ModelSignature("m", "w", 256)
    ivf_g = build_index(x, ids, kind="ivfpq", model=sig, gpu=True)      # the default pq_m, GPU-sized
    assert ivf_g.params.pq_m == 64
    flat = build_index(x, ids, kind="flat", model=sig)
    q = queries(x, 100, seed=3)
    assert recall_at_k(ivf_g.search_arrays(q, 10)[1], flat.search_arrays(q, 10)[1]) >= 0.9


@pytest.mark.gpu
@pytest.mark.skipif(num_gpus() == 0, reason="faiss has no GPU support or sees no CUDA device")
def test_gpu_index_copied_back_to_cpu(real, tmp_path):
    """The index on all GPUs (a sharded wrapper with several) comes back as one CPU index."""
    import faiss

    from ecgbatch.index.faiss_index import on_gpu, to_cpu, to_gpu

    t, v = real
    cpu = build_index(t, kind="flat")
    g = to_gpu(cpu.index)
    assert on_gpu(g)
    back = to_cpu(g)
    assert not on_gpu(back) and back.ntotal == cpu.index.ntotal
    faiss.write_index(back, str(tmp_path / "x.faiss"))


@pytest.mark.parametrize("where", [None, "age >= 60 and sex == 'F'"])
def test_search_by_score_is_the_exact_top_k_inside_the_cohort(real, where):
    """A score that is not an inner product (here a nonlinear one of two directions), scanned
    exactly in chunks smaller than the index."""
    t, v = real
    idx = build_index(t, kind="flat")
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, v.shape[1])).astype(np.float32)
    fn = lambda x: np.tanh(x @ a) - (x @ b) ** 2  # noqa: E731
    vn = np.asarray(idx.vectors, np.float32)
    s = fn(vn)
    mask = np.ones(len(v), bool) if where is None else where_mask(t, where)
    s[~mask] = -np.inf
    want = np.argsort(-s, kind="stable")[:7]
    hits = idx.search_by_score(fn, k=7, where=where, chunk_rows=50)
    assert [h.faiss_id for h in hits] == list(want)
    np.testing.assert_allclose([h.score for h in hits], s[want], rtol=1e-5)
    assert len(idx.search_by_score(fn, k=5, where="age > 1000")) == 0
    with pytest.raises(ValueError, match="one score per vector"):
        idx.search_by_score(lambda x: x[:, :2], k=3)
