"""Nearest-neighbour search over ECG embeddings: exact flat vs IVF-PQ (with exact re-ranking of the
top k*R candidates from the stored float vectors), optionally HNSW. Prints one table: build time,
index size, peak RSS, queries/s (all queries in one batch call, best of --repeats), speed-up over
flat and recall@10 against flat's exact result.

    .venv/bin/python bench/index.py [--n 1000000] [--dim 256] [--queries 1000]
                                    [--data clustered|real] [--kinds flat,ivfpq] [--nprobe 16,32,64]

Data (named in the table):
  clustered  synthetic: 1000 Gaussian clusters in a 32-dim latent space, mapped to --dim by a
             fixed random matrix plus small isotropic noise, L2-normalised (embeddings have a
             low intrinsic dimension and cluster structure; uniform random vectors would make
             IVF recall meaningless). Queries are fresh draws from the same mixture.
  real       the 377 real PTB-XL + CinC 2021 records (../shared/data) embedded by a fixed random
             Gaussian projection of their signals (ecgbatch.index.random_projection), replicated
             to --n with isotropic noise (cosine to the original ~0.9). Queries: new noisy copies.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import faiss  # noqa: E402

from ecgbatch.index import ModelSignature, build_index  # noqa: E402


def clustered(n: int, dim: int, seed: int, clusters: int = 1000, latent: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).standard_normal((clusters, latent), dtype=np.float32)
    mix = np.random.default_rng(4321).standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        m = min(n, a + 100_000) - a
        z = centers[rng.integers(0, clusters, m)] + 1.0 * rng.standard_normal((m, latent), dtype=np.float32)
        out[a : a + m] = z @ mix + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)
    return out


def real_replicated(n: int, dim: int, seed: int) -> np.ndarray:
    from ecgbatch._paths import shared_dir
    from ecgbatch.index.random_projection import real_ecg_table
    from ecgbatch.index.store import embeddings_to_numpy

    if shared_dir() is None:
        sys.exit("--data real needs ../shared/data")
    base = embeddings_to_numpy(real_ecg_table(shared_dir() / "data", dim=dim)["embedding"])
    rng = np.random.default_rng(seed)
    out = base[rng.integers(0, len(base), n)]
    out += 0.5 / np.sqrt(dim) * rng.standard_normal(out.shape, dtype=np.float32)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def qps(fn, n_queries: int, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return n_queries / best, out


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def file_bytes(p: Path) -> int:
    return p.stat().st_size if p.is_file() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", choices=["clustered", "real"], default="clustered")
    ap.add_argument("--kinds", default="flat,ivfpq", help="comma list of flat, ivfpq, hnsw")
    ap.add_argument("--nprobe", default="", help="comma list of nprobe values for IVF-PQ "
                    "(default: the index's own choice and twice it)")
    ap.add_argument("--rerank", default="10", help="comma list of re-rank factors R (top k*R "
                    "PQ candidates re-scored exactly)")
    ap.add_argument("--pq-m", type=int, default=0, help="PQ sub-quantizers (default: D/8)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: all)")
    ap.add_argument("--workdir", default=None, help="where index files are written (temp dir)")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    t0 = time.perf_counter()
    gen = clustered if args.data == "clustered" else real_replicated
    x = gen(args.n, args.dim, seed=0)
    q = gen(args.queries, args.dim, seed=99)
    t_data = time.perf_counter() - t0
    ids = [f"r{i}" for i in range(args.n)]
    sig = ModelSignature(f"bench-{args.data}", "none", args.dim)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ecgbatch-bench-index-"))
    print(f"data: {args.data}, N={args.n:,}, D={args.dim}, {args.queries} queries, k={args.k}, "
          f"faiss {faiss.__version__} threads={faiss.omp_get_max_threads()}, "
          f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, data made in {t_data:.1f}s",
          flush=True)

    rows = []
    truth = None
    flat_qps = None
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        rss0 = rss_mb()
        t0 = time.perf_counter()
        reranks = [int(r) for r in args.rerank.split(",") if r]
        idx = build_index(x, ids, kind=kind, model=sig, rerank=reranks[0], pq_m=args.pq_m or None)
        build_s = time.perf_counter() - t0
        out = work / kind
        idx.save(out)
        rss1 = rss_mb()
        size = file_bytes(out / "index.faiss")
        vec = file_bytes(out / "vectors.npy")
        if kind == "flat":
            flat_qps, (s, truth) = qps(lambda: idx.search_arrays(q, args.k), args.queries, args.repeats)
            rows.append((kind, "exact", build_s, size, 0, rss1 - rss0, flat_qps, 1.0, 1.0))
            print(f"  flat: build {build_s:.1f}s, {flat_qps:.0f} q/s", flush=True)
        elif kind == "ivfpq":
            probes = [int(p) for p in args.nprobe.split(",") if p] or [idx.params.nprobe, 2 * idx.params.nprobe]
            for nprobe, rr in [(p, r) for r in reranks for p in probes]:
                r, (s, got) = qps(lambda: idx.search_arrays(q, args.k, nprobe=nprobe, rerank=rr),
                                  args.queries, args.repeats)
                rec = recall(got, truth) if truth is not None else float("nan")
                p = idx.params
                cfg = f"nlist={p.nlist} m={p.pq_m}x{p.pq_nbits}b nprobe={nprobe} rerank={rr}"
                rows.append((kind, cfg, build_s, size, vec, rss1 - rss0, r,
                             r / flat_qps if flat_qps else float("nan"), rec))
                print(f"  ivfpq {cfg}: build {build_s:.1f}s, {r:.0f} q/s, recall@{args.k} {rec:.3f}", flush=True)
        elif kind == "hnsw":
            r, (s, got) = qps(lambda: idx.search_arrays(q, args.k), args.queries, args.repeats)
            rec = recall(got, truth) if truth is not None else float("nan")
            cfg = f"M={idx.params.hnsw_m} efSearch={idx.params.ef_search}"
            rows.append((kind, cfg, build_s, size, 0, rss1 - rss0, r,
                         r / flat_qps if flat_qps else float("nan"), rec))
        else:
            sys.exit(f"unknown kind {kind!r}")
        del idx

    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"ecgbatch.index: {args.data} data, N={args.n:,}, D={args.dim}, "
                      f"{args.queries} queries, k={args.k}")
    for c in ("index", "config", "build s", "index MB", "+vectors.npy MB", "RSS +MB",
              "queries/s", "x flat", f"recall@{args.k}"):
        tab.add_column(c, justify="left" if c in ("index", "config") else "right")
    for kind, cfg, b, size, vec, drss, r, sp, rec in rows:
        tab.add_row(kind, cfg, f"{b:.1f}", f"{size / 2**20:.0f}", f"{vec / 2**20:.0f}" if vec else "-",
                    f"{drss:.0f}", f"{r:,.0f}", f"{sp:.1f}", f"{rec:.3f}")
    Console(width=170).print(tab)
    print(f"peak RSS of the whole run: {peak_rss_mb():.0f} MB (includes the {x.nbytes / 2**20:.0f} MB "
          "input array and flat's ground truth); index files under", work)


if __name__ == "__main__":
    main()
