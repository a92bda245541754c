"""Text builders: one function per text source, each turning what a dataset stores about a
record into the clinical English statement text ECG-CoCa is trained on.

All builders return lower-case text made of short statements joined by ". " (the style of
LUDB's free-text diagnoses: "sinus bradycardia. left axis deviation. left ventricular
hypertrophy"), so that a model trained on them meets the same kind of text at query time.
ECG-Chat lower-cases all training text too (ecg-chat-reference.md 2.3).

Sources:
- LUDB-style WFDB header comments (free text)            -> ``ludb_text``
- PhysioNet/CinC Challenge ``#Dx`` SNOMED-CT codes          -> ``SnomedNames`` + ``snomed_text``
- PTB-XL ``scp_codes`` (+ the report when it is English)    -> ``ScpStatements`` + ``ptbxl_text``
- MIMIC-IV-ECG machine reports (ECG-Chat's rules)           -> ``mimic_machine_report``
- anybody's reports in a CSV/JSONL (id or path, text)       -> ``read_text_table``
- the waveform-measurement suffix (ECG-Chat's WDE)          -> ``with_wave_suffix``

Imports nothing heavy (no torch), so the CLI and tests can use it cheaply.
"""
from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ecgbatch.errors import EcgbatchError

__all__ = [
    "TextSourceError", "normalize_statement", "join_statements", "hea_comments", "ludb_text",
    "SnomedNames", "snomed_text", "ScpStatements", "ptbxl_text", "looks_english",
    "mimic_machine_report", "read_text_table", "with_wave_suffix", "header_text",
]


class TextSourceError(EcgbatchError, ValueError):
    """A text source that cannot be read or does not give text for a record."""

    kind = "text_source"


_SPACES = re.compile(r"\s+")


def normalize_statement(s: str) -> str:
    """One statement: lower-case, single spaces, no trailing full stop or separators."""
    s = _SPACES.sub(" ", str(s)).strip().lower()
    return s.strip(" .;,")


def join_statements(statements) -> str:
    """Join statements with ". ", dropping empty ones and exact repeats (order kept)."""
    out: list[str] = []
    for s in statements:
        s = normalize_statement(s)
        if s and s not in out:
            out.append(s)
    return ". ".join(out)


# --- WFDB header comments (LUDB free text, Challenge #Dx) ---------------------------------

def hea_comments(path: str | Path) -> list[str]:
    """The ``#`` comment lines of a WFDB header, without the leading ``#``. Reads the text
    header only, never the signal."""
    p = Path(path)
    if p.suffix != ".hea":
        p = p.with_suffix(".hea")
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise TextSourceError(f"cannot read header comments from {str(p)!r}: {exc}") from exc
    return [ln.strip()[1:].strip() for ln in lines if ln.strip().startswith("#")]


# Comment keys that are demographics or bookkeeping, never diagnoses.
_NON_DIAGNOSIS = re.compile(r"^<?(age|sex|rx|hx|sx|dx|diagnoses|comments?)>?\s*:", re.I)
_AXIS = re.compile(r"^electric(al)? axis( of the heart)?\s*:\s*(.+)$", re.I)


def ludb_text(comments: list[str]) -> str:
    """LUDB-style free-text diagnoses -> statement text.

    ``["<age>: 51", "<sex>: F", "<diagnoses>:", "Rhythm: Sinus bradycardia.",
    "Electric axis of the heart: left axis deviation.", "Left ventricular hypertrophy."]``
    -> ``"sinus bradycardia. left axis deviation. left ventricular hypertrophy"``.

    The ``Rhythm:`` label is dropped (the rhythm name says it); an axis that is not itself a
    deviation becomes "<value> electric axis" ("normal electric axis"); other
    "category: detail" lines are kept as written.
    """
    statements = []
    for c in comments:
        c = c.strip()
        if not c or _NON_DIAGNOSIS.match(c):
            continue
        m = re.match(r"^rhythm\s*:\s*(.+)$", c, re.I)
        if m:
            statements.append(m.group(1))
            continue
        m = _AXIS.match(c)
        if m:
            v = normalize_statement(m.group(3))
            statements.append(v if "axis" in v else f"{v} electric axis")
            continue
        statements.append(c)
    return join_statements(statements)


@dataclass(frozen=True)
class SnomedNames:
    """SNOMED-CT code -> condition name, from the Challenge's dx_mapping_*.csv files."""

    names: dict[str, str]

    @classmethod
    def from_dir(cls, folder: str | Path) -> "SnomedNames":
        files = sorted(Path(folder).glob("dx_mapping_*.csv"))
        if not files:
            raise TextSourceError(f"no dx_mapping_*.csv files in {str(folder)!r}")
        return cls.from_csvs(files)

    @classmethod
    def from_csvs(cls, files) -> "SnomedNames":
        names: dict[str, str] = {}
        for f in files:
            with open(f, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    code, dx = (row.get("SNOMEDCTCode") or "").strip(), (row.get("Dx") or "").strip()
                    if code and dx:
                        names.setdefault(code, dx)
        if not names:
            raise TextSourceError(f"no SNOMEDCTCode/Dx rows in {[str(f) for f in files]!r}")
        return cls(names)

    def name(self, code: str) -> str:
        code = str(code).strip()
        if code not in self.names:
            raise TextSourceError(f"SNOMED-CT code {code!r} is not in the dx mapping")
        return self.names[code]


def challenge_dx_codes(comments: list[str]) -> list[str]:
    """The codes of a Challenge header's ``#Dx: c1,c2`` comment ([] when there is none)."""
    for c in comments:
        m = re.match(r"^dx\s*:\s*(.*)$", c.strip(), re.I)
        if m:
            return [t.strip() for t in m.group(1).split(",") if t.strip()]
    return []


def snomed_text(codes: list[str], names: SnomedNames) -> str:
    """``["164889003", "59118001"]`` -> ``"atrial fibrillation. right bundle branch block"``.
    An unknown code raises TextSourceError (never silently dropped)."""
    if not codes:
        raise TextSourceError("no SNOMED-CT codes to describe")
    return join_statements(names.name(c) for c in codes)


# --- PTB-XL -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScpStatements:
    """SCP-ECG code -> English description (PTB-XL's scp_statements.csv)."""

    descriptions: dict[str, str]
    rhythm_codes: frozenset[str]
    # Diagnostic statements carry a likelihood in scp_codes (15/35/50/80/100; 0 = not given);
    # form and rhythm statements do not.
    diagnostic_codes: frozenset[str] = frozenset()

    @classmethod
    def from_csv(cls, path: str | Path) -> "ScpStatements":
        desc, rhythm, diagnostic = {}, set(), set()
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                code = (row.get("") or row.get("Unnamed: 0") or "").strip()
                if not code:
                    continue
                desc[code] = (row.get("description") or "").strip()
                if (row.get("rhythm") or "").strip() in ("1", "1.0"):
                    rhythm.add(code)
                if (row.get("diagnostic") or "").strip() in ("1", "1.0"):
                    diagnostic.add(code)
        if not desc:
            raise TextSourceError(f"no SCP statements in {str(path)!r}")
        return cls(desc, frozenset(rhythm), frozenset(diagnostic))


def parse_scp_codes(value) -> dict[str, float]:
    """PTB-XL's ``scp_codes`` cell ("{'AFIB': 0.0, 'NDT': 100.0}") -> dict. Never ``eval``."""
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    try:
        d = ast.literal_eval(str(value))
    except (ValueError, SyntaxError) as exc:
        raise TextSourceError(f"bad scp_codes cell {value!r}") from exc
    if not isinstance(d, dict):
        raise TextSourceError(f"scp_codes must be a dict, got {value!r}")
    return {str(k): float(v) for k, v in d.items()}


# Words that mark a report as German (PTB-XL reports are partly German, mostly from the
# Schiller devices). Matched as whole words or word stems.
_GERMAN = re.compile(
    r"(rhythmus|lagetyp|linkstyp|rechtstyp|steiltyp|unbestaetigt|bericht|vorhof|kammer|"
    r"schenkel|hypertrophie|ueber|\bund\b|\bmit\b|\bnicht\b|\bder\b|\bdie\b|\bdas\b|\bbei\b|"
    r"\bkein\b|\bsowie\b|moeglich|wahrscheinlich|periphere|niederspannung|infarkt|"
    r"veraenderung|erregung|ischaemie|[äöüß])", re.I)
_ENGLISH = re.compile(r"\b(the|and|with|in|of|is|are|sinus|rhythm|normal|atrial|ventricular|"
                      r"possible|probable|leads?|block|abnormal|left|right)\b", re.I)


def looks_english(text: str) -> bool:
    """Crude but explicit: English words present and no German marker words."""
    return bool(_ENGLISH.search(text)) and not _GERMAN.search(text)


# How a diagnostic statement's likelihood is phrased. PTB-XL derives the likelihood from the
# cardiologist's own hedge words (e.g. 15 for "nicht auszuschliessen", cannot be excluded); 0 means
# none was given (form and rhythm statements never carry one). The hedge is kept rather than the
# statement dropped: it is what the reader wrote, the instruction builder already answers such
# findings as uncertain, and a model trained on it can say "possible" where a reader would.
LIKELY = 80.0      # >= 80 (or 0, not given): stated as is
PROBABLE = 50.0    # 50 <= likelihood < 80: "probable ..."; below 50: "possible ..."


def scp_statement(code: str, likelihood: float, statements: ScpStatements) -> str:
    """One SCP code as English text, hedged by its likelihood (diagnostic statements only)."""
    text = statements.descriptions[code]
    if code not in statements.diagnostic_codes or likelihood <= 0 or likelihood >= LIKELY:
        return text
    return f"{'probable' if likelihood >= PROBABLE else 'possible'} {text}"


def ptbxl_text(scp_codes, statements: ScpStatements, report: str | None = None,
               include_english_report: bool = True) -> str:
    """PTB-XL record -> text: the English descriptions of its SCP codes (rhythm first, then
    the others by decreasing likelihood, hedged by ``scp_statement``), then the free-text
    report when it is English. An SCP code missing from the statements table raises
    TextSourceError."""
    codes = parse_scp_codes(scp_codes)
    if not codes:
        raise TextSourceError("empty scp_codes")
    for c in codes:
        if c not in statements.descriptions:
            raise TextSourceError(f"SCP code {c!r} is not in scp_statements.csv")
    order = sorted(codes, key=lambda c: (c not in statements.rhythm_codes, -codes[c], c))
    parts = [scp_statement(c, codes[c], statements) for c in order]
    if include_english_report and report and looks_english(report):
        parts.extend(report_statements(clean_ptbxl_report(report)))
    return join_statements(parts)


def report_statements(report: str) -> list[str]:
    """Split a free-text report into statements at full stops that end a sentence (". "),
    dropping PTB-XL's annotator "edit: ..." notes."""
    out = []
    for s in re.split(r"\.\s+|\.$", report):
        s = s.strip()
        if s and not s.lower().startswith("edit:"):
            out.append(s)
    return out


def clean_ptbxl_report(report: str) -> str:
    """ECG-Chat's PTB-XL report cleaning (ecg-chat-reference.md 4.2), applied to English."""
    t = str(report).lower().replace("ekg", "ecg")
    for junk in ("unconfirmed report", "unconfirmed", " age undetermined", "4.46 "):
        t = t.replace(junk, "")
    return _SPACES.sub(" ", t).strip()


# --- MIMIC-IV-ECG machine reports ---------------------------------------------------------

# Report lines ECG-Chat drops (data-quality notices, not findings); verbatim from its loader.
MIMIC_BAD_LINES = (
    "--- Warning: Data quality may affect interpretation ---",
    "--- Recording unsuitable for analysis - please repeat ---",
    "Analysis error",
    "conduction defect",
    "*** report made without knowing patient's sex ***",
    "--- Suspect arm lead reversal",
    "--- Possible measurement error ---",
    "--- Pediatric criteria used ---",
    "--- Suspect limb lead reversal",
    "-------------------- Pediatric ECG interpretation --------------------",
    "Lead(s) unsuitable for analysis:",
    "LEAD(S) UNSUITABLE FOR ANALYSIS:",
    "PACER DETECTION SUSPENDED DUE TO EXTERNAL NOISE-REVIEW ADVISED",
    "Pacer detection suspended due to external noise-REVIEW ADVISED",
)

# ECG-Chat's abbreviation expansions, in its order. ECG-Chat uses plain substring replaces
# (so "mi" also hits "minimal", and lbbb becomes "light bundle branch block": quirk Q4);
# ``faithful=True`` reproduces that, the default expands whole words only and fixes the typo.
_MIMIC_ABBREV = (("rbbb", "right bundle branch block"), ("lbbb", "left bundle branch block"),
                 ("lvh", "left ventricle hypertrophy"), ("mi", "myocardial infarction"),
                 ("lafb", "left anterior fascicular block"),
                 ("pvc(s)", "ventricular premature complex"), ("pvcs", "ventricular premature complex"),
                 ("pac(s)", "atrial premature complex"), ("pacs", "atrial premature complex"))


def mimic_machine_report(row: dict, n_reports: int = 18, faithful: bool = False) -> str:
    """MIMIC-IV-ECG ``machine_measurements.csv`` row -> report text by ECG-Chat's rules:
    ``report_0..report_17`` joined with spaces, lines containing a data-quality notice
    dropped, lower-cased, ``---``/``***``/`` - age undetermined`` removed, abbreviations
    expanded. Raises TextSourceError when nothing is left (ECG-Chat drops such records)."""
    lines = []
    for j in range(n_reports):
        v = row.get(f"report_{j}")
        if isinstance(v, str) and v.strip() and not any(b in v for b in MIMIC_BAD_LINES):
            lines.append(v.strip())
    if not lines:
        raise TextSourceError("MIMIC record has no usable report line")
    t = " ".join(lines).lower()
    for junk in ("---", "***", " - age undetermined"):
        t = t.replace(junk, "")
    for short, long in _MIMIC_ABBREV:
        if faithful:
            t = t.replace(short, "light bundle branch block" if short == "lbbb" else long)
        else:
            t = re.sub(rf"(?<![a-z]){re.escape(short)}(?![a-z])", long, t)
    return _SPACES.sub(" ", t).strip()


# --- anybody's reports --------------------------------------------------------------------

def read_text_table(path: str | Path, key_column: str | None = None,
                    text_column: str = "text") -> dict[str, str]:
    """A CSV or JSONL of (record id or path, text) -> {key: text}. The key column is
    ``key_column`` or the first of record_id / path / id present. Duplicate keys with
    different texts, missing columns and empty texts raise TextSourceError."""
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TextSourceError(f"{p}: line {i} is not JSON: {exc}") from exc
    elif p.suffix.lower() in (".csv", ".tsv"):
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
    else:
        raise TextSourceError(f"text table must be .csv, .tsv or .jsonl, got {str(p)!r}")
    if not rows:
        raise TextSourceError(f"text table {str(p)!r} is empty")
    cols = set(rows[0])
    key = key_column or next((c for c in ("record_id", "path", "id") if c in cols), None)
    if key is None or key not in cols or text_column not in cols:
        raise TextSourceError(f"text table {str(p)!r} needs a key column (record_id/path/id) and "
                              f"{text_column!r}; got columns {sorted(cols)!r}")
    out: dict[str, str] = {}
    for i, r in enumerate(rows, 1):
        k, t = str(r.get(key) or "").strip(), r.get(text_column)
        if not k or not isinstance(t, str) or not t.strip():
            raise TextSourceError(f"{p}: row {i} has an empty key or text")
        t = _SPACES.sub(" ", t).strip().lower()
        if k in out and out[k] != t:
            raise TextSourceError(f"{p}: key {k!r} appears twice with different texts")
        out[k] = t
    return out


# --- dispatch on a header ------------------------------------------------------------------

def header_text(comments: list[str], snomed: SnomedNames | None = None) -> str:
    """Text from a WFDB header's comments, whatever its dialect: a Challenge ``#Dx`` line ->
    SNOMED names (needs ``snomed``), otherwise LUDB-style free text. Raises TextSourceError
    when the header holds no diagnosis."""
    codes = challenge_dx_codes(comments)
    if codes:
        if snomed is None:
            raise TextSourceError("header has #Dx SNOMED codes but no dx mapping was given")
        return snomed_text(codes, snomed)
    text = ludb_text(comments)
    if not text:
        raise TextSourceError("header comments hold no diagnosis text")
    return text


def with_wave_suffix(text: str, suffix: str | None) -> str:
    """ECG-Chat's WDE: the measurement suffix (" RR: ... P/R/T Wave: a/b/c", leading space)
    appended to the report, the whole lower-cased (ecg-chat-reference.md 2.6)."""
    if not suffix:
        return text.lower()
    if not suffix.startswith(" "):
        suffix = " " + suffix
    return (text + suffix).lower()


def meta_text(meta: dict, snomed: SnomedNames | None = None) -> str:
    """Text from a Record's ``meta`` as the WFDB reader fills it: LUDB-style ``diagnoses``
    lines, else Challenge ``dx_codes`` (needs ``snomed``). Raises TextSourceError when the
    record carries no diagnosis."""
    if meta.get("diagnoses"):
        text = ludb_text(list(meta["diagnoses"]))
        if text:
            return text
    codes = meta.get("dx_codes") or []
    if codes:
        if snomed is None:
            raise TextSourceError("record has SNOMED-CT dx_codes but no dx mapping was given")
        return snomed_text(list(codes), snomed)
    raise TextSourceError("record meta holds no diagnoses or dx_codes")
