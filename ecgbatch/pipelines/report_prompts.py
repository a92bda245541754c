"""Per-record prompts for `ecgbatch report --input`, built from the record's ECG-CoCa embedding
in the job's workspace (``ecgbatch embed ARCHIVE -w WS`` first; a record without one becomes a
failure of kind not_embedded). The prompt stage is a Ray Data actor placed between reading and
the engine actors; it loads what it needs once and adds a ``question`` column.

- ``--rag K --reference W`` (retrieval-augmented reporting): the reports of the K records of a
  reference workspace nearest to this ECG (ECG-to-ECG cosine, W's FAISS index) as examples.
- ``--ddp`` (diagnosis-driven prompt): the labels ecgbatch's calibrated probes (shipped beside
  the encoder's weights) give the record, with their probabilities, before the question; the
  findings and the prompt text are ecgbatch.llava.diagnosis_prompt's, as for single records, evaluation and
  training (here the workspace's embeddings are used instead of recomputing them).

Reference texts: the newest report table of W (``ecgbatch report --input`` run on the reference
archive), else the diagnoses text of W's embedding table (the records' header statements).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ecgbatch.encoders.probes import LinearProbe
from ecgbatch.llava.diagnosis_prompt import diagnosis_prompt, findings_from_embeddings, probe_files
from ecgbatch.pipelines.table_model import table_weights_folder
from ecgbatch.pipelines.workspace import ModelTable, open_table, ReportTable


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


class _EmbeddingPrompts:
    """Base of the prompt actors: the job workspace's embeddings by source, the failure rows of
    records that have none, and ``questions(vectors, sources)`` for the rest (subclasses)."""

    def __init__(self, query_table: str, question: str):
        from ecgbatch.index.store import embeddings_to_numpy

        table = ModelTable(Path(query_table).parent, Path(query_table).name)
        self.weights_hash = table.read_meta().get("weights_hash")
        qt = table.read_table(["source", "embedding"])
        self.rows = {s: i for i, s in enumerate(qt.column("source").to_pylist())}
        self.vectors = embeddings_to_numpy(qt.column("embedding"))
        self.question = question

    def questions(self, vectors: np.ndarray, sources: list[str]) -> list[str]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["source"])
        for k in ("ok", "stage", "error_type", "error_kind", "message"):
            batch[k] = np.array(batch[k], copy=True)
        questions = np.array([self.question] * n, dtype=object)
        want = [int(i) for i in np.flatnonzero(batch["ok"])]
        have = [i for i in want if str(batch["source"][i]) in self.rows]
        for i in sorted(set(want) - set(have)):
            batch["ok"][i], batch["stage"][i], batch["error_type"][i] = False, "prompt", "NotEmbedded"
            batch["error_kind"][i] = "not_embedded"
            batch["message"][i] = (f"{batch['record_id'][i]}: no embedding in the job's workspace: run "
                                   "`ecgbatch embed ARCHIVE -w WS` with the encoder first")
        if have:
            srcs = [str(batch["source"][i]) for i in have]
            vecs = self.vectors[[self.rows[s] for s in srcs]]
            for i, q in zip(have, self.questions(vecs, srcs)):
                questions[i] = q
        batch["question"] = questions
        return batch


class RagPromptUDF(_EmbeddingPrompts):
    """``question`` = the K reference examples + the base question."""

    def __init__(self, reference: str, query_table: str, k: int, question: str):
        from ecgbatch.index import EcgIndex

        super().__init__(query_table, question)
        ref_root = Path(reference)
        self.index = EcgIndex.load(ref_root)
        self.texts, _ = reference_texts(ref_root.parent)
        self.k = int(k)

    def neighbours(self, vectors: np.ndarray, sources: list[str]) -> list[list[Any]]:
        """The K nearest reference records with a text, the query record itself excluded."""
        hits = self.index.search(vectors, k=self.k + 1 + min(8, self.k))
        out = []
        for src, hs in zip(sources, hits):
            out.append([h for h in hs if h.metadata.get("source") != src and h.record_id in self.texts][:self.k])
        return out

    def questions(self, vectors, sources):
        return [rag_question(self.question, [self.texts[h.record_id] for h in hs])
                for hs in self.neighbours(vectors, sources)]


class DiagnosisPromptUDF(_EmbeddingPrompts):
    """``question`` = the record's DDP findings (ecgbatch.llava.diagnosis_prompt: the encoder's calibrated
    probes on the workspace's embedding, the paper's rule) + the base question."""

    def __init__(self, query_table: str, probe_files: list[str], question: str):
        super().__init__(query_table, question)
        self.probes = [LinearProbe.load(p) for p in probe_files]
        for pr in self.probes:
            pr.check_model(self.weights_hash, what=f"the embeddings of {query_table}")

    def findings(self, vectors: np.ndarray):
        return findings_from_embeddings(self.probes, vectors)

    def questions(self, vectors, sources):
        return [diagnosis_prompt(self.question, f) for f in self.findings(vectors)]


def prepare(settings, workspace, reference, archive):
    """(prompt stage for build_dataset, settings with the reference recorded) for ddp/rag."""
    if settings.mode == "ddp":
        stage = prepare_diagnosis_prompts(settings, workspace, archive)
        return stage, replace(settings, reference=stage[1]["fn_constructor_kwargs"]["query_table"])
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
    stage = (RagPromptUDF, {"fn_constructor_kwargs": {"reference": str(ref.root), "query_table": str(query.root),
                                                      "k": settings.rag_k, "question": settings.question},
                            **_actor_args()})
    return stage, replace(settings, reference=str(ref.root.resolve()))


def _actor_args() -> dict:
    """One prompt actor that reserves no CPU: its work per block (a FAISS query or a few probe
    dot products on the stored embeddings) is small, and a reserved share would starve the read
    tasks (one CPU each) on a small machine: with 2 CPUs, the engine actor's 1 + 0.5 here left
    0.5, and the job waited for ever."""
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=1), "num_cpus": 0, "max_restarts": 0}


def prepare_diagnosis_prompts(settings, workspace, archive):
    """The ddp stage: the newest embedding table of the workspace and its model's probes."""
    try:
        table = open_table(Path(workspace))
    except (FileNotFoundError, ValueError) as exc:
        raise FileNotFoundError(f"--ddp labels records from their embeddings: run `ecgbatch embed {archive} "
                                f"-w {workspace}` first ({exc})") from None
    name = str(table.read_meta().get("model"))
    probes = [str(p) for p in probe_files(table_weights_folder(table), name)]
    return (DiagnosisPromptUDF, {"fn_constructor_kwargs": {"query_table": str(table.root), "probe_files": probes,
                                                     "question": settings.question}, **_actor_args()})
