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
    dataset: ludb                    # ptbxl | ludb | cinc2021: whose test-fold rule applies
                                     # (ecgbatch.testfold); default: ptbxl for text: ptbxl, else
                                     # the name when it is one of these, else a folder of that
                                     # name in ``records``
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

from ecgbatch import testfold
from ecgbatch._paths import REPO_ROOT, shared_dir
from ecgbatch.errors import EcgbatchError
from ecgbatch.io import RecordSource, list_records
from ecgbatch.io.errors import EcgReadError
from ecgbatch.signal import ecgchat_wave_text, measure
from ecgbatch.signal.config import PreprocessConfig
from ecgbatch.signal.preprocess import preprocess
from ecgbatch.training import texts as T

TEXT_KINDS = ("header", "ptbxl", "table", "mimic")
PARTS = ("train", "test", "all")
CACHE_VERSION = 2   # 2: test fold left out, duplicates across sources counted once, scp codes kept


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
    dataset: str | None = None

    def __post_init__(self):
        if self.text not in TEXT_KINDS:
            raise ValueError(f"source {self.name!r}: text must be one of {TEXT_KINDS}, got {self.text!r}")
        need = {"ptbxl": ("metadata", "statements"), "mimic": ("metadata",), "table": ("table",)}
        for k in need.get(self.text, ()):
            if not getattr(self, k):
                raise ValueError(f"source {self.name!r}: text={self.text!r} needs {k!r}")
        if self.dataset is not None and self.dataset not in testfold.DATASETS:
            raise ValueError(f"source {self.name!r}: dataset must be one of {testfold.DATASETS}, "
                             f"got {self.dataset!r}")

    @property
    def test_dataset(self) -> str | None:
        """The dataset whose test-fold rule applies to this source (None: no rule, e.g. MIMIC)."""
        if self.dataset is not None:
            return self.dataset
        if self.text == "ptbxl":
            return "ptbxl"
        if self.name in testfold.DATASETS:
            return self.name
        # a folder named after the data set (../shared/data/ludb/data, sample_archive/cinc2021)
        parts = set(Path(str(self.records)).parts)
        return next((d for d in testfold.DATASETS if d in parts), None)

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


def split_record_sources(specs: list[SourceSpec], part: str = "train") -> list[tuple[SourceSpec, list]]:
    """[(spec, RecordSources)] of one part of the data: "train" leaves out every record of the
    test fold (``ecgbatch.testfold``), "test" keeps only those, "all" (evaluation of given
    records) keeps every record. An ECG that an earlier source
    already gave (the same PTB-XL ecg_id in two folders, a Challenge HR* copy of a PTB-XL
    record) is counted once, from the first source that lists it. ``limit`` applies after."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    seen: set[str] = set()
    out = []
    for spec in specs:
        ds = spec.test_dataset
        keep = []
        for rs in list_sources(spec.records):
            key = testfold.ecg_key(ds, rs.path) if ds else None
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            if part == "all" or (ds is not None and testfold.in_test_fold(ds, rs.path)) == (part == "test"):
                keep.append(rs)
        out.append((spec, keep[: spec.limit]))
    return out


def record_keys(specs: list[SourceSpec], part: str = "train") -> tuple[set[str], set[str]]:
    """(ECG keys, patient groups) of one part's records, without reading a signal: groups as the
    builders name them (PTB-XL: its patient; other sources: one patient per record). For checks
    such as "which test records did a model trained on these sources see"."""
    keys, groups = set(), set()
    for spec, rss in split_record_sources(specs, part):
        ts = TextSource(spec) if spec.text == "ptbxl" else None
        for rs in rss:
            if spec.test_dataset:
                keys.add(testfold.ecg_key(spec.test_dataset, rs.path))
            if ts is not None:
                groups.add(f"ptbxl:patient:{int_key(ts.ptbxl_row(rs.path, '').get('patient_id') or '')}")
            else:
                groups.add(f"{spec.name}:{Path(rs.path).stem}")
    return keys, groups


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
            row = self.ptbxl_row(path, rid)
            patient = row.get("patient_id") or rid
            # one group name per PTB-XL patient, whichever folder the record comes from
            return (T.ptbxl_text(row["scp_codes"], self.statements, row.get("report")),
                    f"ptbxl:patient:{int_key(patient)}")
        if s.text == "mimic":
            row = self.rows.get(int_key(Path(path).stem)) or self.rows.get(int_key(rid))
            if row is None:
                raise T.TextSourceError(f"MIMIC study {rid!r} is not in {s.metadata!r}")
            return T.mimic_machine_report(row), f"{s.name}:patient:{row.get('subject_id') or rid}"
        for key in (rid, path, str(Path(path).with_suffix("")), Path(path).name, Path(path).stem):
            if key in self.table:
                return self.table[key], f"{s.name}:{rid}"
        raise T.TextSourceError(f"record {rid!r} ({path}) has no row in {s.table!r}")


    def ptbxl_row(self, path: str, rid: str) -> dict:
        row = find_ptbxl_row(self.rows, path, rid)
        if row is None:
            raise T.TextSourceError(f"PTB-XL record {rid!r} is not in {self.spec.metadata!r}")
        return row

    def codes(self, path: str, rid: str) -> str:
        """PTB-XL's SCP codes with their likelihoods as JSON ('' for other text kinds)."""
        if self.spec.text != "ptbxl":
            return ""
        return json.dumps(T.parse_scp_codes(self.ptbxl_row(path, rid)["scp_codes"]), sort_keys=True)


def find_ptbxl_row(rows: dict[str, dict], path: str, rid: str) -> dict | None:
    """The metadata row (rows keyed by ecg_id) of a PTB-XL record named '00017_lr', '17.npy', ..."""
    for name in (Path(path).stem, rid):
        key = testfold.ptbxl_ecg_id(name)
        if key is not None and key in rows:
            return rows[key]
    return None


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
    WDE measurement suffix (" RR: ... P/R/T Wave: ..."); group: patient key for splits;
    codes: per pair, PTB-XL's SCP codes with their likelihoods as JSON ('' for other sources)."""

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
    codes: list[str] | None = None

    def __post_init__(self):
        if self.codes is None:
            self.codes = [""] * len(self.text)

    def __len__(self) -> int:
        return len(self.text)

    def texts(self, wde: bool) -> list[str]:
        return [T.with_wave_suffix(t, w if wde else None) for t, w in zip(self.text, self.wave)]

    def subset(self, idx) -> "PairSet":
        idx = np.asarray(idx, dtype=int)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return PairSet(self.x[idx], pick(self.text), pick(self.wave), pick(self.record_id),
                       pick(self.source), pick(self.group), pick(self.path), self.hr_bpm[idx],
                       [], dict(self.meta), pick(self.codes))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(tmp, x=self.x, hr_bpm=self.hr_bpm, text=np.array(self.text, dtype=object).astype(str),
                 wave=np.array(self.wave, dtype=str), record_id=np.array(self.record_id, dtype=str),
                 source=np.array(self.source, dtype=str), group=np.array(self.group, dtype=str),
                 path=np.array(self.path, dtype=str), codes=np.array(self.codes, dtype=str),
                 info=np.array(json.dumps({"skipped": self.skipped, "meta": self.meta})))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> "PairSet":
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            return cls(z["x"], *[[str(v) for v in z[k]] for k in
                                 ("text", "wave", "record_id", "source", "group", "path")],
                       hr_bpm=z["hr_bpm"], skipped=info["skipped"], meta=info["meta"],
                       codes=[str(v) for v in z["codes"]] if "codes" in z.files else None)


def cache_key(specs: list[SourceSpec], pre: PreprocessConfig, measure_method: str, part: str = "train") -> str:
    blob = json.dumps({"v": CACHE_VERSION, "sources": [s.__dict__ for s in specs],
                       "pre": pre.to_dict(), "measure": measure_method,
                       "part": part, "testfold": sorted(testfold.members())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_pairs(specs: list[SourceSpec], pre: PreprocessConfig, measure_method: str = "ecgchat",
                on_error: str = "raise", progress=None, part: str = "train") -> PairSet:
    """Read, preprocess and measure every record of one part (``split_record_sources``: "train"
    leaves the test fold out, "test" is the test fold only) of every source. ``on_error="skip"``
    leaves out records that cannot be read or have no text, and lists each one (source, record,
    error kind, message) in ``PairSet.skipped``; ``"raise"`` stops at the first."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")

    xs, cols, hr, skipped = [], {k: [] for k in ("text", "wave", "record_id", "source", "group", "path",
                                                  "codes")}, [], []
    for spec, sources in split_record_sources(specs, part):
        src = TextSource(spec)
        if not sources:
            raise PairBuildError(f"source {spec.name!r}: no records in {spec.records!r}")
        for rs in sources:
            path = rs.path
            try:
                rec = rs.read(**(spec.read_options or {}))
                text, group = src.text_and_group(path, rec)
                codes = src.codes(path, str(rec.record_id or Path(path).stem))
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
                         ("group", group), ("path", str(path)), ("codes", codes)):
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
                  measure_method: str = "ecgchat", on_error: str = "raise", part: str = "train"
                  ) -> tuple[PairSet, Path]:
    """The cached PairSet of one part for these sources and this preprocessing, built on first use."""
    key = cache_key(specs, pre, measure_method, part)
    path = resolve_path(cache_dir) / f"pairs-{key}{'' if part == 'train' else '-' + part}.npz"
    if path.is_file():
        return PairSet.load(path), path
    ps = build_pairs(specs, pre, measure_method, on_error, part=part)
    ps.save(path)
    return ps, path
