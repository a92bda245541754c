"""(ECG, text) pairs for contrastive training: records from a manifest (``ecgbatch.io.scan``
output) or a folder, text from one text source per dataset, all preprocessed and measured once
into a cache (npz) so that epochs only augment and tokenize.

A source is a dict (one per dataset, from the training YAML)::

    name: ludb                       # free label, also the split stratum
    records: "{shared}/data/ludb/data"   # folder (scanned) or manifest (.parquet/.csv, column "path")
    text: header                     # header | ptbxl | table | mimic
    dx_mapping: "{shared}/data/cinc2021"  # header: folder with dx_mapping_*.csv (Challenge #Dx)
    metadata: ".../ptbxl_database.csv"    # ptbxl: database CSV; mimic: machine_measurements.csv
    statements: ".../scp_statements.csv"  # ptbxl
    table: ".../reports.csv"         # table: CSV/JSONL of (record_id or path, text[, patient_id])

``{shared}`` expands to ``ecgbatch._paths.shared_dir()``; other relative paths are taken from
the current directory, then from the repository root.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgbatch._paths import REPO_ROOT, shared_dir
from ecgbatch.errors import EcgbatchError
from ecgbatch.io import RecordSource, list_records
from ecgbatch.io.errors import EcgReadError
from ecgbatch.signal import ecgchat_wave_text, measure
from ecgbatch.signal.config import PreprocessConfig
from ecgbatch.signal.preprocess import preprocess
from ecgbatch.training import texts as T

TEXT_KINDS = ("header", "ptbxl", "table", "mimic")
CACHE_VERSION = 1


class PairBuildError(EcgbatchError, ValueError):
    """A record could not be turned into an (ECG, text) pair."""

    kind = "pair_build"


def resolve_path(p: str | Path) -> Path:
    s = str(p)
    if "{shared}" in s:
        sd = shared_dir()
        if sd is None:
            raise FileNotFoundError(f"path {s!r} needs ../shared, which is not present")
        s = s.replace("{shared}", str(sd))
    q = Path(s).expanduser()
    if q.is_absolute() or q.exists():
        return q
    r = REPO_ROOT / q
    return r if r.exists() else q


@dataclass(frozen=True)
class SourceSpec:
    name: str
    records: str
    text: str = "header"
    dx_mapping: str | None = None
    metadata: str | None = None
    statements: str | None = None
    table: str | None = None
    # What the files themselves do not say, passed to ecgbatch.io.read_record (e.g. for bare
    # .npy arrays: {fs: 500, layout: samples_first}).
    read_options: dict | None = None
    limit: int | None = None   # take only the first N records (tests)

    def __post_init__(self):
        if self.text not in TEXT_KINDS:
            raise ValueError(f"source {self.name!r}: text must be one of {TEXT_KINDS}, got {self.text!r}")
        need = {"ptbxl": ("metadata", "statements"), "mimic": ("metadata",), "table": ("table",)}
        for k in need.get(self.text, ()):
            if not getattr(self, k):
                raise ValueError(f"source {self.name!r}: text={self.text!r} needs {k!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "SourceSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown source keys {sorted(unknown)} in {d!r}")
        return cls(**d)


# --- record lists -------------------------------------------------------------------------

def list_sources(records: str | Path) -> list:
    """RecordSources (``ecgbatch.io``) of a manifest (.parquet/.csv with a ``path`` column and
    optionally ``format``; rows of a failures column are kept, so reading them raises their
    typed error) or of a folder (listed by ``ecgbatch.io.list_records``)."""

    p = resolve_path(records)
    if p.is_file():
        import pandas as pd

        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
        if "path" not in df.columns:
            raise ValueError(f"manifest {str(p)!r} has no 'path' column; got {list(df.columns)!r}")
        fmts = df["format"] if "format" in df.columns else [None] * len(df)
        return [RecordSource(str(path), str(f) if isinstance(f, str) and f else None)
                for path, f in zip(df["path"], fmts)]
    if p.is_dir():
        return list(list_records(p))
    raise FileNotFoundError(f"records {str(records)!r} is neither a manifest file nor a folder")


# --- text per record ----------------------------------------------------------------------

class TextSource:
    """Gives the text (and the patient group) of one record of one source."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.snomed = None
        if spec.text == "header":
            folder = resolve_path(spec.dx_mapping) if spec.dx_mapping else None
            if folder is not None:
                self.snomed = T.SnomedNames.from_dir(folder)
        elif spec.text == "ptbxl":
            self.statements = T.ScpStatements.from_csv(resolve_path(spec.statements))
            self.rows = csv_by_key(resolve_path(spec.metadata), "ecg_id")
        elif spec.text == "mimic":
            self.rows = csv_by_key(resolve_path(spec.metadata), "study_id")
        elif spec.text == "table":
            self.table = T.read_text_table(resolve_path(spec.table))

    def text_and_group(self, path: str, record) -> tuple[str, str]:
        s, rid = self.spec, str(record.record_id or Path(path).stem)
        if s.text == "header":
            return T.meta_text(record.meta or {}, self.snomed), f"{s.name}:{rid}"
        if s.text == "ptbxl":
            row = self.rows.get(int_key(Path(path).stem)) or self.rows.get(int_key(rid))
            if row is None:
                raise T.TextSourceError(f"PTB-XL record {rid!r} is not in {s.metadata!r}")
            patient = row.get("patient_id") or rid
            return (T.ptbxl_text(row["scp_codes"], self.statements, row.get("report")),
                    f"{s.name}:patient:{int_key(patient)}")
        if s.text == "mimic":
            row = self.rows.get(int_key(Path(path).stem)) or self.rows.get(int_key(rid))
            if row is None:
                raise T.TextSourceError(f"MIMIC study {rid!r} is not in {s.metadata!r}")
            return T.mimic_machine_report(row), f"{s.name}:patient:{row.get('subject_id') or rid}"
        for key in (rid, path, str(Path(path).with_suffix("")), Path(path).name, Path(path).stem):
            if key in self.table:
                return self.table[key], f"{s.name}:{rid}"
        raise T.TextSourceError(f"record {rid!r} ({path}) has no row in {s.table!r}")


def int_key(v) -> str:
    """'00318' / '318.0' / 318 -> '318' (PTB-XL ids and patient ids come in several forms)."""
    s = str(v).strip()
    try:
        return str(int(float(s)))
    except ValueError:
        return s


def csv_by_key(path: Path, key: str) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or key not in rows[0]:
        raise ValueError(f"{str(path)!r} has no {key!r} column")
    return {int_key(r[key]): r for r in rows}


# --- the cache ------------------------------------------------------------------------------

@dataclass
class PairSet:
    """N pairs. x: [N, leads, samples] preprocessed; text: diagnosis statements; wave: the
    WDE measurement suffix (" RR: ... P/R/T Wave: ..."); group: patient key for splits."""

    x: np.ndarray
    text: list[str]
    wave: list[str]
    record_id: list[str]
    source: list[str]
    group: list[str]
    path: list[str]
    hr_bpm: np.ndarray
    skipped: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.text)

    def texts(self, wde: bool) -> list[str]:
        return [T.with_wave_suffix(t, w if wde else None) for t, w in zip(self.text, self.wave)]

    def subset(self, idx) -> "PairSet":
        idx = np.asarray(idx, dtype=int)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return PairSet(self.x[idx], pick(self.text), pick(self.wave), pick(self.record_id),
                       pick(self.source), pick(self.group), pick(self.path), self.hr_bpm[idx],
                       [], dict(self.meta))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(tmp, x=self.x, hr_bpm=self.hr_bpm, text=np.array(self.text, dtype=object).astype(str),
                 wave=np.array(self.wave, dtype=str), record_id=np.array(self.record_id, dtype=str),
                 source=np.array(self.source, dtype=str), group=np.array(self.group, dtype=str),
                 path=np.array(self.path, dtype=str),
                 info=np.array(json.dumps({"skipped": self.skipped, "meta": self.meta})))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> "PairSet":
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            return cls(z["x"], *[[str(v) for v in z[k]] for k in
                                 ("text", "wave", "record_id", "source", "group", "path")],
                       hr_bpm=z["hr_bpm"], skipped=info["skipped"], meta=info["meta"])


def cache_key(specs: list[SourceSpec], pre: PreprocessConfig, measure_method: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "sources": [s.__dict__ for s in specs],
                       "pre": pre.to_dict(), "measure": measure_method}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_pairs(specs: list[SourceSpec], pre: PreprocessConfig, measure_method: str = "ecgchat",
                on_error: str = "raise", progress=None) -> PairSet:
    """Read, preprocess and measure every record of every source. ``on_error="skip"`` leaves
    out records that cannot be read or have no text, and lists each one (source, record,
    error kind, message) in ``PairSet.skipped``; ``"raise"`` stops at the first."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")

    xs, cols, hr, skipped = [], {k: [] for k in ("text", "wave", "record_id", "source", "group", "path")}, [], []
    for spec in specs:
        src = TextSource(spec)
        sources = list_sources(spec.records)
        if spec.limit is not None:
            sources = sources[: spec.limit]
        if not sources:
            raise PairBuildError(f"source {spec.name!r}: no records in {spec.records!r}")
        for rs in sources:
            path = rs.path
            try:
                rec = rs.read(**(spec.read_options or {}))
                text, group = src.text_and_group(path, rec)
                x = preprocess(rec, pre).x
                m = measure(rec, method=measure_method)
            except (EcgReadError, T.TextSourceError) as exc:
                if on_error == "raise":
                    raise PairBuildError(f"source {spec.name!r}, record {path!r}: "
                                         f"{type(exc).__name__}: {exc}") from exc
                skipped.append({"source": spec.name, "path": str(path),
                                "error": type(exc).__name__, "message": str(exc)})
                continue
            xs.append(x)
            for k, v in (("text", text), ("wave", ecgchat_wave_text(m)),
                         ("record_id", str(rec.record_id or Path(path).stem)), ("source", spec.name),
                         ("group", group), ("path", str(path))):
                cols[k].append(v)
            hr.append(np.nan if m.hr_bpm is None else float(m.hr_bpm))
            if progress is not None:
                progress()
    if not xs:
        raise PairBuildError("no usable pairs in any source")
    return PairSet(np.stack(xs).astype(np.float32), hr_bpm=np.asarray(hr, dtype=np.float32),
                   skipped=skipped, meta={"preprocess": pre.to_dict(), "measure": measure_method},
                   **cols)


def load_or_build(specs: list[SourceSpec], pre: PreprocessConfig, cache_dir: str | Path,
                  measure_method: str = "ecgchat", on_error: str = "raise") -> tuple[PairSet, Path]:
    """The cached PairSet for these sources and this preprocessing, built on first use."""
    key = cache_key(specs, pre, measure_method)
    path = resolve_path(cache_dir) / f"pairs-{key}.npz"
    if path.is_file():
        return PairSet.load(path), path
    ps = build_pairs(specs, pre, measure_method, on_error)
    ps.save(path)
    return ps, path
