"""Instruction data (ECG-Chat's ECG-Instruct format) built from real records and only from what
the records say: their label statements (LUDB diagnoses, Challenge SNOMED-CT codes, PTB-XL SCP
statements and heart axis) and waveform measurements (``ecgbatch.signal.measure``).

Per record (``record_facts``):
- statements: the record's own label statements, each certain or hedged (PTB-XL diagnostic
  statements with likelihood < 50 or unstated; in any statement, a finding after a hedge word
  such as "undefined" or "possible" is hedged, as the findings matcher reads it);
- present: findings (``ecgbatch.text.findings``) asserted by a certain statement;
- uncertain: findings of hedged statements, and findings that any statement is *related* to
  ("incomplete right bundle branch block" makes "no RBBB" unsafe);
- absent (the negatives, ECG-Chat's "absent findings"): findings of the vocabulary the source
  annotates (``PROFILES``) that are neither present nor uncertain. Rhythm and axis negatives only
  when the record states its rhythm / axis. A source whose annotation protocol is unknown gets
  no negatives;
- measurements: heart rate and PR/QRS/QT/QTc with units, only when the measurement's quality is
  "ok" and the value is in a plausible range; no PR during AF/flutter, no intervals when paced.

Questions (``qa_pool``): report requests in several phrasings (answer: the record's report),
yes/no on present and absent findings, rhythm, axis, rate and intervals. Items: one report item
per record plus short multi-turn dialogues drawn from the pool, all deterministic in the seed.
Each item keeps its provenance in ``meta`` (source, record id, patient, split, the facts used).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ecgbatch.io.errors import EcgReadError, MissingLeadError
from ecgbatch.io.snomed import snomed_table
from ecgbatch.llava.grounding import GROUND_AXIS_CONVENTION, WORDINGS
from ecgbatch.signal import measure
from ecgbatch.signal.axis import axis_category
from ecgbatch.signal.measurements import INTERVAL_RANGES
from ecgbatch.signal.rate import BRADYCARDIA_BPM, TACHYCARDIA_BPM
from ecgbatch.text.findings import BY_KEY, KEYS, extract_findings, group_keys, related_findings
from ecgbatch.training import texts as T
from ecgbatch.training.data import group_strata, split_by_group, stable_int
from ecgbatch.training.instruct_format import ECG_TOKEN
from ecgbatch.training.instruct_questions import balanced_yes_no, conversation, qa_pool, report_turn
from ecgbatch.training.pairs import SourceSpec, TextSource, int_key, resolve_path, split_record_sources

_ALL = tuple(KEYS)
# Findings each annotation protocol states whenever they are there, so that their absence from
# a record's labels means "not present". Documented per dataset:
PROFILES: dict[str, tuple[str, ...]] = {
    # LUDB: every record lists its rhythm, axis, conduction abnormalities, hypertrophies,
    # ischemia and repolarization abnormalities (ludb.csv has one column per category).
    "ludb": _ALL,
    # PTB-XL: rhythm, diagnostic (MI, STTC, CD, HYP) statements by cardiologists; axis from the
    # heart_axis column when filled. Form statements (ST-T) are not annotated for every record.
    "ptbxl": tuple(k for k in _ALL if k != "st_t_change"),
    # Challenge 2021 subsets that annotate broadly (Georgia E*, PTB-XL HR*, Chapman-Ningbo JS*):
    # the scored rhythm and conduction classes plus LVH.
    "challenge": ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "sinus_arrhythmia",
                  "atrial_fibrillation", "atrial_flutter", "av_block", "rbbb", "lbbb", "lafb", "lvh"),
    # CPSC2018 (A*, Q*): only its nine classes (normal, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE).
    "challenge-cpsc": ("atrial_fibrillation", "av_block", "rbbb", "lbbb"),
    "none": (),
}
CHALLENGE_PREFIXES = (("HR", "challenge"), ("JS", "challenge"), ("E", "challenge"),
                      ("A", "challenge-cpsc"), ("Q", "challenge-cpsc"))
PTBXL_AXIS = {"MID": "normal electrical axis", "LAD": "left axis deviation", "ALAD": "left axis deviation",
              "RAD": "right axis deviation", "ARAD": "right axis deviation"}
_PACED = re.compile(r"pac(ed|ing|emaker)")


@dataclass(frozen=True)
class InstructSource:
    """A pairs ``SourceSpec`` plus which findings its labels are complete for: a PROFILES name,
    a list of finding keys, or "auto" (ptbxl -> "ptbxl"; Challenge #Dx -> by record prefix;
    LUDB-protocol headers -> "ludb"; anything else -> "none")."""

    spec: SourceSpec
    annotates: str | tuple[str, ...] = "auto"

    @classmethod
    def from_dict(cls, d: dict) -> "InstructSource":
        d = dict(d)
        ann = d.pop("annotates", "auto")
        if isinstance(ann, str) and ann != "auto" and ann not in PROFILES:
            raise ValueError(f"source {d.get('name')!r}: annotates must be 'auto', one of "
                             f"{sorted(PROFILES)} or a list of findings, got {ann!r}")
        if not isinstance(ann, str):
            ann = tuple(ann)
            unknown = [k for k in ann if k not in BY_KEY]
            if unknown:
                raise ValueError(f"source {d.get('name')!r}: unknown findings {unknown}; known: {list(KEYS)}")
        return cls(SourceSpec.from_dict(d), ann)


@dataclass
class RecordFacts:
    source: str
    record_id: str
    patient: str
    path: str
    report: str
    statements: list[dict]            # {"text", "certain"}
    present: list[str]
    uncertain: list[str]
    absent: list[str]
    measurements: dict = field(default_factory=dict)
    scp_codes: dict = field(default_factory=dict)   # PTB-XL: {code: likelihood} as the source gives them

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("statements", "present", "uncertain", "absent", "measurements",
                                              "scp_codes")}


# --- labels per source ------------------------------------------------------------------------

def _ludb_protocol(diagnoses: list[str]) -> bool:
    low = [d.lower() for d in diagnoses]
    return any(d.startswith("rhythm:") for d in low) and any(d.startswith("electric axis") for d in low)


@lru_cache(maxsize=1)
def _packaged_snomed() -> T.SnomedNames:
    return T.SnomedNames({code: name for code, (name, _abbr) in snomed_table().items()})


def _snomed_names(src: TextSource) -> T.SnomedNames:
    """The source's dx mapping, with the packaged Challenge mapping for codes it lacks."""
    if src.snomed is None:
        return _packaged_snomed()
    return T.SnomedNames({**_packaged_snomed().names, **src.snomed.names})


def _header_labels(src: TextSource, rec, rid: str):
    meta = rec.meta or {}
    if meta.get("diagnoses"):
        text = T.ludb_text(list(meta["diagnoses"]))
        if text:
            stmts = [(s, True) for s in text.split(". ")]   # hedges: found per finding
            return stmts, ("ludb" if _ludb_protocol(meta["diagnoses"]) else "none"), text
    codes = list(meta.get("dx_codes") or [])
    if not codes:
        raise T.TextSourceError(f"record {rid!r} carries no diagnoses or #Dx codes")
    names = _snomed_names(src)
    text = T.snomed_text(codes, names)
    profile = next((p for pre, p in CHALLENGE_PREFIXES if rid.upper().startswith(pre)), "none")
    return [(s, True) for s in text.split(". ")], profile, text


def _ptbxl_labels(src: TextSource, rid: str, path: str):
    row = src.ptbxl_row(path, rid)
    codes = T.parse_scp_codes(row["scp_codes"])
    stm = src.statements
    certain = {c: v for c, v in codes.items() if c not in stm.diagnostic_codes or v >= 50}
    hedged = [c for c in codes if c not in certain]
    stmts = [(T.normalize_statement(stm.descriptions[c]), True) for c in certain]
    stmts += [(T.normalize_statement(stm.descriptions[c]), False) for c in hedged]
    axis = PTBXL_AXIS.get((row.get("heart_axis") or "").strip())
    if axis:
        stmts.append((axis, True))
    # the report: every statement, hedged by its likelihood as the pairs' texts are
    parts = [T.ptbxl_text(codes, stm, row.get("report"))] + ([axis] if axis else [])
    return stmts, "ptbxl" if axis else "ptbxl-no-axis", T.join_statements(parts)


def _vocabulary(profile, annotates) -> tuple[str, ...]:
    if annotates != "auto":
        return PROFILES[annotates] if isinstance(annotates, str) else tuple(annotates)
    if profile == "ptbxl-no-axis":
        return tuple(k for k in PROFILES["ptbxl"] if not k.startswith("axis_"))
    return PROFILES[profile]


# Groups whose members exclude each other: "no" to one needs a stated member of the group.
EXCLUSIVE_GROUPS = (group_keys("rhythm"), tuple(k for k in KEYS if k.startswith("axis_")))


def classify_findings(stmts: list[tuple[str, bool]], vocabulary, report: str = "") -> tuple[list[str], list[str], list[str]]:
    """(present, uncertain, absent) finding keys from (statement, certain) pairs. Anything the
    free-text ``report`` mentions or is related to is never "absent" either."""
    present, uncertain = set(), set()
    for text, certain in stmts:
        for k, state in extract_findings(text).items():
            if state == "present" and certain:
                present.add(k)
            elif state != "negated":
                uncertain.add(k)
    labels = ". ".join(t for t, _ in stmts)
    uncertain |= related_findings(labels) | related_findings(report) | set(extract_findings(report))
    uncertain -= present
    absent = [k for k in vocabulary if k not in present and k not in uncertain]
    for members in EXCLUSIVE_GROUPS:
        if not present & set(members):
            absent = [k for k in absent if k not in members]
    order = {k: i for i, k in enumerate(KEYS)}
    return (sorted(present, key=order.get), sorted(uncertain, key=order.get), absent)


def plausible_measurements(m, present: list[str], uncertain: list[str], statements: str) -> dict:
    """Measured values worth stating (units in the key), or {} when the measurement failed."""
    if m is None or m.quality != "ok":
        return {}
    out = {"method": m.method}
    if m.hr_bpm and math.isfinite(m.hr_bpm):
        out["hr_bpm"] = int(round(m.hr_bpm))
    if _PACED.search(statements):
        return out
    no_p = {"atrial_fibrillation", "atrial_flutter"} & (set(present) | set(uncertain))
    for k, (lo, hi) in INTERVAL_RANGES.items():
        v = getattr(m, k)
        if k == "pr_ms" and no_p:
            continue
        if v is not None and math.isfinite(v) and lo <= v <= hi:
            out[k] = int(round(v))
    return out


# The axis a record's labels leave unsaid (most PTB-XL rows have no heart_axis; the Challenge
# labels never state one): its report states the measured one, in the convention and words of
# the grounded prompt, so that a model learns to state the axis for every record. Marked
# {"measured": true} among the record's statements.
MEASURED_AXIS = {"left": ("axis_left", "left axis deviation"), "right": ("axis_right", "right axis deviation"),
                 "normal": ("axis_normal", "normal electrical axis"),
                 "horizontal": ("axis_normal", "horizontal electrical axis"),
                 "vertical": ("axis_normal", "vertical electrical axis")}


def measured_axis(m, present: list[str], uncertain: list[str], statements: str) -> tuple[str, str] | None:
    """(finding key, phrase) of the measured axis when the labels state none, else None (also
    for a failed measurement, an "extreme" axis and paced records)."""
    if m is None or m.quality != "ok" or _PACED.search(statements):
        return None
    if any(k.startswith("axis_") for k in (*present, *uncertain)):
        return None
    return MEASURED_AXIS.get(axis_category(m.axis_deg, GROUND_AXIS_CONVENTION))


# LVH by the QRS voltages (Sokolow-Lyon or Cornell, ecgbatch.signal.voltage) where the labels
# state none: the report says so, as the grounded prompt does ("LVH voltage criteria met"), so
# a model learns to state the LVH the prompt measured. Worded "... by voltage criteria" (a
# finding, where "voltage criteria for ..." reads as a hedge to ecgbatch.text.findings).
MEASURED_LVH = ("lvh", WORDINGS[2]["lvh_voltage"])   # the grounded prompt's wording 2 says the same


def measured_lvh(m, present: list[str], uncertain: list[str], statements: str) -> tuple[str, str] | None:
    """(finding key, phrase) when the voltages meet an LVH criterion and the labels state no LVH
    (neither present nor uncertain), else None (also for a failed measurement, records not in a
    voltage unit, and paced records)."""
    if m is None or m.quality != "ok" or _PACED.search(statements):
        return None
    if "lvh" in present or "lvh" in uncertain or not m.lvh_voltage:
        return None
    return MEASURED_LVH


# Where labels and measurements disagree, the data says neither (a dialogue must not answer
# "no AV block" and "PR 230 ms", nor "sinus bradycardia" and "rate 80/min").
LONG_PR_MS = 200


def reconcile(present: list[str], absent: list[str], meas: dict) -> tuple[list[str], dict]:
    """(absent, measurements) without the negatives and values that contradict each other."""
    meas, absent = dict(meas), list(absent)
    hr, pr = meas.get("hr_bpm"), meas.get("pr_ms")
    if hr is not None and (("sinus_bradycardia" in present and hr >= BRADYCARDIA_BPM)
                           or ("sinus_tachycardia" in present and hr <= TACHYCARDIA_BPM)):
        meas.pop("hr_bpm")
    if hr is not None and hr < BRADYCARDIA_BPM:
        absent = [k for k in absent if k != "sinus_bradycardia"]
    if hr is not None and hr > TACHYCARDIA_BPM:
        absent = [k for k in absent if k != "sinus_tachycardia"]
    if pr is not None and "av_block" in present and pr <= LONG_PR_MS:
        meas.pop("pr_ms")
    if pr is not None and pr > LONG_PR_MS:
        absent = [k for k in absent if k != "av_block"]
    return absent, meas


def record_facts(isrc: InstructSource, src: TextSource, path: str, rec, measure_method: str | None) -> RecordFacts:
    spec = isrc.spec
    rid = str(rec.record_id or Path(path).stem)
    if spec.text == "header":
        stmts, profile, report = _header_labels(src, rec, rid)
    elif spec.text == "ptbxl":
        stmts, profile, report = _ptbxl_labels(src, rid, path)
    else:
        raise ValueError(f"source {spec.name!r}: instruction data needs labels (text: header or ptbxl), "
                         f"got text={spec.text!r}")
    # the patient group as the pairs builder names it (header sources: one patient per record)
    group = f"{spec.name}:{rid}" if spec.text == "header" else src.text_and_group(path, rec)[1]
    present, uncertain, absent = classify_findings(stmts, _vocabulary(profile, isrc.annotates), report)
    meas, statements = {}, [{"text": t, "certain": c} for t, c in stmts]
    if measure_method:
        try:
            m = measure(rec, method=measure_method)
        except MissingLeadError:
            m = None
        said = " ".join(t for t, _ in stmts)
        meas = plausible_measurements(m, present, uncertain, said)
        absent, meas = reconcile(present, absent, meas)
        for found in (measured_lvh(m, present, uncertain, said), measured_axis(m, present, uncertain, said)):
            if found is not None:
                present = sorted([*present, found[0]], key=KEYS.index)
                absent = [k for k in absent if k != found[0]]
                report = T.join_statements([report, found[1]])
                statements.append({"text": found[1], "certain": True, "measured": True})
    codes = json.loads(src.codes(path, rid)) if spec.text == "ptbxl" else {}
    return RecordFacts(spec.name, rid, group, str(path), report, statements, present, uncertain, absent, meas, codes)


# --- items ------------------------------------------------------------------------------------

@dataclass
class InstructBuild:
    items: list[dict]
    records: list[RecordFacts]
    skipped: list[dict]


def _items_for(facts: RecordFacts, ecg: str, split: str, seed: int, dialogues: int) -> list[dict]:
    rng = np.random.default_rng(stable_int(seed, facts.source, facts.record_id, "instruct"))
    base = {"source": facts.source, "record_id": facts.record_id, "patient": facts.patient, "split": split}
    out = []
    rep = report_turn(facts, rng)
    out.append({"id": f"{facts.source}/{facts.record_id}/report", "ecg": ecg,
                "conversations": conversation([rep], ecg_first=bool(rng.integers(4))),
                "meta": {**base, "kind": "report", "facts": [{"kind": "report", **rep["facts"]}],
                         "record_facts": facts.to_dict()}})
    pool = balanced_yes_no(qa_pool(facts, rng), rng)
    for j in range(dialogues if pool else 0):
        n = int(min(len(pool), rng.integers(2, 5)))
        turns = [pool[i] for i in rng.permutation(len(pool))[:n]]
        if rng.random() < 0.25:            # some dialogues end with the report request
            turns.append(report_turn(facts, rng))
        out.append({"id": f"{facts.source}/{facts.record_id}/dialogue{j}", "ecg": ecg,
                    "conversations": conversation(turns, ecg_first=bool(rng.integers(4))),
                    "meta": {**base, "kind": "dialogue", "facts": [{"kind": t["kind"], **t["facts"]} for t in turns],
                             "record_facts": facts.to_dict()}})
    return out


def _ptbxl_patients(sources: list[InstructSource], text_sources: list[TextSource]) -> dict[str, str]:
    """PTB-XL ecg_id -> patient group, from every ptbxl source in the build (so a Challenge HR*
    record, which is a PTB-XL record, lands in its patient's group and split)."""
    out = {}
    for s, ts in zip(sources, text_sources):
        if s.spec.text == "ptbxl":
            for key, row in ts.rows.items():
                if row.get("patient_id"):
                    out[key] = f"ptbxl:patient:{int_key(row['patient_id'])}"   # as TextSource names it
    return out


def _relative(path: str, root: Path | None) -> str:
    if root is None:
        return str(Path(path).resolve())
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def build_instruct(sources: list[InstructSource], seed: int = 0, val_fraction: float | dict | None = None,
                   measure_method: str | None = "multilead", dialogues: int = 2, root: str | Path | None = None,
                   on_error: str = "skip", progress=None, part: str = "train") -> InstructBuild:
    """Items for every readable record with labels. ``val_fraction`` splits by patient
    (``split_by_group``, per source); without it every item is in split "all". ``root``: write
    ``ecg`` paths relative to it (ECG-Chat's ``--ecg_folder``), else absolute. ``on_error``:
    "skip" lists unreadable / unlabelled records in ``skipped``; "raise" stops. ``part``: "train"
    leaves the test fold out (``ecgbatch.testfold``), "test" is the test fold only (for
    evaluation), "all" every record."""

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    text_sources = [TextSource(s.spec) for s in sources]
    ptbxl_patient = _ptbxl_patients(sources, text_sources)
    records, skipped = [], []
    parts = split_record_sources([s.spec for s in sources], part)   # "train": the test fold left out
    for isrc, ts, (_, rss) in zip(sources, text_sources, parts):
        for rs in rss:
            try:
                rec = rs.read(**(isrc.spec.read_options or {}))
                facts = record_facts(isrc, ts, rs.path, rec, measure_method)
            except (EcgReadError, T.TextSourceError) as exc:
                if on_error == "raise":
                    raise
                skipped.append({"source": isrc.spec.name, "path": str(rs.path), "error": type(exc).__name__,
                                "message": str(exc)})
                continue
            m = re.fullmatch(r"HR0*(\d+)", facts.record_id)
            if isrc.spec.text == "header" and m and m.group(1) in ptbxl_patient:
                facts.patient = ptbxl_patient[m.group(1)]
            records.append(facts)
            if progress is not None:
                progress()
    if not records:
        raise ValueError(f"no usable records in any source ({len(skipped)} skipped)")
    splits = _splits(records, val_fraction, seed)
    rootp = Path(root) if root is not None else None
    items = [it for f, sp in zip(records, splits)
             for it in _items_for(f, _relative(f.path, rootp), sp, seed, dialogues)]
    return InstructBuild(items, records, skipped)


def _splits(records: list[RecordFacts], val_fraction, seed: int) -> list[str]:
    if val_fraction is None:
        return ["all"] * len(records)
    groups = [f.patient for f in records]
    # a patient seen in two sources is split with the first one
    _, va = split_by_group(groups, group_strata(groups, [f.source for f in records]), val_fraction, seed)
    val = set(va.tolist())
    return ["val" if i in val else "train" for i in range(len(records))]


def load_sources(arg: str) -> list[InstructSource]:
    """One CLI SOURCE: a YAML/JSON file (a ``sources:`` list, or a training job's
    ``data.sources``), or ``[NAME=]FOLDER`` of WFDB records with labels in their headers
    (Challenge ``dx_mapping_*.csv`` in the folder are used when present)."""
    import yaml

    name, _, folder = arg.rpartition("=") if "=" in arg else ("", "", arg)
    p = resolve_path(folder)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".json"):
        doc = yaml.safe_load(p.read_text())
        lst = (doc.get("sources") or (doc.get("data") or {}).get("sources")) if isinstance(doc, dict) else doc
        if not isinstance(lst, list) or not lst:
            raise ValueError(f"{str(p)!r} has no 'sources' list (or 'data: sources:')")
        return [InstructSource.from_dict(d) for d in lst]
    if not p.is_dir():
        raise FileNotFoundError(f"source {arg!r} is neither a sources YAML/JSON nor a folder")
    dx = str(p) if any(p.glob("dx_mapping_*.csv")) else None
    return [InstructSource(SourceSpec(name=name or p.name, records=str(p), text="header", dx_mapping=dx))]
