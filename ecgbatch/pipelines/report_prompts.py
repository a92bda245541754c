"""Per-record prompts for `ecgbatch report --input`: retrieval-augmented reporting (``--rag K
--reference W``: the reports of the K records of a reference workspace nearest to this ECG, by
ECG-to-ECG cosine similarity of ECG-CoCa embeddings in W's FAISS index, are put in the prompt as
examples). The prompt stage is a Ray Data actor placed between reading and the engine actors;
it loads the reference index and texts once and adds a ``question`` column.

The query ECG's embedding is taken from the job's workspace (``ecgbatch embed ARCHIVE -w WS``
with the reference's encoder); a record that has none becomes a failure (kind not_embedded).

Reference texts: the newest report table of W (``ecgbatch report --input`` run on the reference
archive), else the diagnoses text of W's embedding table (the records' header statements).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

RAG_INTRO = "Reports of ECGs similar to this one:"
RAG_ASK = "Using them only as examples, {question}"


def rag_question(question: str, examples: list[str]) -> str:
    """The question with numbered example reports before it."""
    lines = [RAG_INTRO] + [f"{i + 1}. {t.strip()}" for i, t in enumerate(examples)]
    q = question[:1].lower() + question[1:] if question else question
    return "\n".join(lines + [RAG_ASK.format(question=q)])


def reference_texts(reference: Path) -> tuple[dict[str, str], str]:
    """record_id -> example text of a reference workspace, and where the texts came from."""
    import pyarrow.parquet as pq

    from ecgbatch.pipelines.workspace import ReportTable, open_table

    metas = sorted(reference.glob("report-*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for m in metas:
        t = ReportTable(reference, m.parent.name)
        if t.shard_files():
            tab = t.read_table(["record_id", "report"])
            return dict(zip(tab.column("record_id").to_pylist(), tab.column("report").to_pylist())), str(t.root)
    emb = open_table(reference)
    texts = {}
    for f in emb.shard_files():
        tab = pq.read_table(f, columns=["record_id", "diagnoses"])
        texts.update((r, d) for r, d in zip(tab.column("record_id").to_pylist(),
                                            tab.column("diagnoses").to_pylist()) if d)
    return texts, f"{emb.root} (diagnoses)"


class RagPromptUDF:
    """Ray Data actor: adds ``question`` = the K reference examples + the base question."""

    def __init__(self, reference: str, query_table: str, k: int, question: str):
        from ecgbatch.index import EcgIndex
        from ecgbatch.index.store import embeddings_to_numpy
        from ecgbatch.pipelines.workspace import ModelTable

        ref_root = Path(reference)
        self.index = EcgIndex.load(ref_root)
        self.texts, _ = reference_texts(ref_root.parent)
        qt = ModelTable(Path(query_table).parent, Path(query_table).name).read_table(["source", "embedding"])
        self.rows = {s: i for i, s in enumerate(qt.column("source").to_pylist())}
        self.vectors = embeddings_to_numpy(qt.column("embedding"))
        self.k, self.question = int(k), question

    def neighbours(self, vectors: np.ndarray, sources: list[str]) -> list[list[Any]]:
        """The K nearest reference records with a text, the query record itself excluded."""
        hits = self.index.search(vectors, k=self.k + 1 + min(8, self.k))
        out = []
        for src, hs in zip(sources, hits):
            out.append([h for h in hs if h.metadata.get("source") != src and h.record_id in self.texts][:self.k])
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["source"])
        for k in ("ok", "stage", "error_type", "error_kind", "message"):
            batch[k] = np.array(batch[k], copy=True)
        questions = np.array([self.question] * n, dtype=object)
        want = [i for i in np.flatnonzero(batch["ok"])]
        have = [i for i in want if str(batch["source"][i]) in self.rows]
        for i in set(want) - set(have):
            batch["ok"][i], batch["stage"][i], batch["error_type"][i] = False, "prompt", "NotEmbedded"
            batch["error_kind"][i] = "not_embedded"
            batch["message"][i] = (f"{batch['record_id'][i]}: no embedding in the job's workspace: run "
                                   "`ecgbatch embed ARCHIVE -w WS` with the reference's model first")
        if have:
            vecs = self.vectors[[self.rows[str(batch["source"][i])] for i in have]]
            for i, hs in zip(have, self.neighbours(vecs, [str(batch["source"][i]) for i in have])):
                questions[i] = rag_question(self.question, [self.texts[h.record_id] for h in hs])
        batch["question"] = questions
        return batch


def prepare(settings, workspace, reference, archive):
    """(prompt stage for build_dataset, settings with the reference recorded) for ddp/rag."""
    from ecgbatch.pipelines.workspace import open_table

    if settings.mode == "ddp":
        raise ValueError("--ddp needs ecgbatch's calibrated label probes, which this build does not have "
                         "yet (branch classify); use --question or --rag")
    if reference is None:
        raise ValueError("--rag K needs --reference WORKSPACE")
    ref = open_table(Path(reference))
    if not (ref.index_dir / "index.json").is_file():
        raise FileNotFoundError(f"no FAISS index in {ref.root}: run `ecgbatch index build -w {reference}`")
    model = ref.read_meta().get("model")
    try:
        query = open_table(Path(workspace), model)
    except (FileNotFoundError, ValueError) as exc:
        raise FileNotFoundError(f"--rag needs this archive's embeddings by {model!r} in the workspace: run "
                                f"`ecgbatch embed {archive} -w {workspace} --model {model}` first ({exc})") from None
    from ray.data import ActorPoolStrategy

    stage = (RagPromptUDF, {"fn_constructor_kwargs": {"reference": str(ref.root), "query_table": str(query.root),
                                                      "k": settings.rag_k, "question": settings.question},
                            "compute": ActorPoolStrategy(size=1), "num_cpus": 0.5, "max_restarts": 0})
    return stage, replace(settings, reference=str(ref.root.resolve()))
