"""The fixed, patient-level test fold that no trained part of ecgbatch sees.

Rule (version 1, fixed; changing it changes every test-fold figure):

- PTB-XL (``ptbxl2k/`` and ``ptbxl/records/`` in ``../shared/data``, and Challenge ``HR*``
  records whose ecg_id is in one of their metadata tables): every record of a patient whose
  ``strat_fold`` is 9. PTB-XL assigns folds per patient, so a patient is never split.
- LUDB and PhysioNet/CinC 2021 (all other Challenge records): a patient is in the test fold when
  a stable hash of its key, sha256("ecgbatch-testfold-v1|<key>"), read as a fraction of 2**32
  (first 8 hex digits), is below ``HASHED_SHARE`` (0.30). The key is the record name
  ("ludb:17", "cinc2021:A0689"): both sets have one record per patient. No RNG state is involved,
  so the choice does not move when records are added or the code is reordered.

The members are written to ``testfold_members.csv`` beside this module (dataset, record, rule;
no patient identifiers) so the split is auditable; at run time membership is read from that list
(``in_test_fold``), and ``tests/test_testfold.py`` recomputes the list from ``../shared/data``.
Regenerate it with ``python -m ecgbatch.testfold --write``.

Every trainer goes through ``ecgbatch.training.pairs.split_record_sources``, which drops these
records (CoCa pairs, probe fitting, the instruction data builder); validation splits are carved
from what is left.
"""
from __future__ import annotations

import csv
import hashlib
import re
from functools import lru_cache
from pathlib import Path

RULE_VERSION = "ecgbatch-testfold-v1"
TEST_STRAT_FOLD = 9
HASHED_SHARE = 0.30
DATASETS = ("ptbxl", "ludb", "cinc2021")
MEMBERS_CSV = Path(__file__).resolve().parent / "testfold_members.csv"

_PTBXL_NAME = re.compile(r"(?:HR)?0*(\d+)(?:_[lh]r)?", re.I)
_CHALLENGE_PTBXL = re.compile(r"HR0*(\d+)", re.I)


class TestFoldError(ValueError):
    """A record's dataset is not one the test fold knows."""


def ptbxl_ecg_id(name: str) -> str | None:
    """'00017_lr' / '17' / '17.npy' / 'HR00017' -> '17' (None when not a PTB-XL record name)."""
    m = _PTBXL_NAME.fullmatch(Path(str(name)).stem if str(name).endswith((".npy", ".hea")) else str(name))
    return str(int(m.group(1))) if m else None


def ecg_key(dataset: str, record: str) -> str:
    """The key of one ECG, the same for every copy of it: 'ptbxl:<ecg_id>' for PTB-XL records
    (a Challenge HR* record is the PTB-XL ECG of that number), else '<dataset>:<record name>'."""
    if dataset not in DATASETS:
        raise TestFoldError(f"unknown dataset {dataset!r}; the test fold covers {DATASETS}")
    name = Path(str(record)).name
    for suffix in (".hea", ".npy", ".mat", ".dat"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if dataset == "ptbxl":
        eid = ptbxl_ecg_id(name)
        if eid is None:
            raise TestFoldError(f"{record!r} is not a PTB-XL record name")
        return f"ptbxl:{eid}"
    if dataset == "cinc2021" and _CHALLENGE_PTBXL.fullmatch(name):
        return f"ptbxl:{int(_CHALLENGE_PTBXL.fullmatch(name).group(1))}"
    if dataset == "ludb":
        return f"ludb:{int(name)}" if name.isdigit() else f"ludb:{name}"
    return f"{dataset}:{name}"


def hashed_fraction(key: str) -> float:
    """sha256(RULE_VERSION|key) as a number in [0, 1)."""
    return int(hashlib.sha256(f"{RULE_VERSION}|{key}".encode()).hexdigest()[:8], 16) / 16 ** 8


def hashed_in_test(key: str) -> bool:
    return hashed_fraction(key) < HASHED_SHARE


@lru_cache(maxsize=4)
def _members(path: str) -> frozenset[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return frozenset(r["ecg_key"] for r in csv.DictReader(fh))


def members(path: str | Path = MEMBERS_CSV) -> frozenset[str]:
    """The ECG keys of the test fold (from the committed list)."""
    return _members(str(path))


def in_test_fold(dataset: str, record: str) -> bool:
    """True when this record (file path or name) of ``dataset`` is in the test fold. Records of
    PTB-XL, LUDB and Challenge that are not in ``../shared`` are decided by the same rule (PTB-XL
    needs the strat_fold, so they are taken as not in the list)."""
    key = ecg_key(dataset, record)
    if key in members():
        return True
    return dataset in ("ludb", "cinc2021") and not key.startswith("ptbxl:") and hashed_in_test(key)


# --- computing the list from ../shared/data -----------------------------------------------------

def _ptbxl_rows(shared: Path) -> list[dict]:
    rows = []
    for rel in ("ptbxl2k/ptbxl_database.csv", "ptbxl/ptbxl_database_subset.csv"):
        p = shared / "data" / rel
        if p.is_file():
            with open(p, newline="", encoding="utf-8") as fh:
                rows += [{"folder": rel.split("/")[0], **r} for r in csv.DictReader(fh)]
    return rows


def compute_members(shared: str | Path) -> list[dict]:
    """Rows (dataset, record, ecg_key, rule) of the test fold, computed from ``shared`` (the
    ../shared folder) by the rule above; sorted, one row per ECG."""
    shared = Path(shared)
    rows: dict[str, dict] = {}
    ptbxl = _ptbxl_rows(shared)
    test_patients = {r["patient_id"] for r in ptbxl if int(float(r["strat_fold"])) == TEST_STRAT_FOLD}
    known_ptbxl = set()
    for r in ptbxl:
        key = ecg_key("ptbxl", r["ecg_id"])
        known_ptbxl.add(key)
        if r["patient_id"] in test_patients:
            rows[key] = {"dataset": "ptbxl", "record": key.split(":")[1], "ecg_key": key,
                         "rule": f"strat_fold={TEST_STRAT_FOLD}"}
    for dataset, folder in (("ludb", "data/ludb/data"), ("cinc2021", "data/cinc2021")):
        for hea in sorted((shared / folder).glob("*.hea")):
            key = ecg_key(dataset, hea.stem)
            if key.startswith("ptbxl:"):
                if key in known_ptbxl:       # decided by its PTB-XL patient's fold above
                    continue
                key = f"cinc2021:{hea.stem}"   # a PTB-XL ECG we hold no metadata for
            if hashed_in_test(key):
                rows[key] = {"dataset": dataset, "record": hea.stem, "ecg_key": ecg_key(dataset, hea.stem),
                             "rule": f"hash<{HASHED_SHARE}"}
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["ecg_key"]))


def write_members(shared: str | Path, path: str | Path = MEMBERS_CSV) -> int:
    rows = compute_members(shared)
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "record", "ecg_key", "rule"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(p)
    _members.cache_clear()
    return len(rows)


if __name__ == "__main__":   # python -m ecgbatch.testfold --write
    import sys

    from ecgbatch._paths import shared_dir

    sd = shared_dir()
    if sd is None:
        sys.exit("../shared is not present")
    if "--write" in sys.argv:
        print(f"wrote {write_members(sd)} test-fold ECGs to {MEMBERS_CSV}")
    else:
        for r in compute_members(sd):
            print(r["dataset"], r["record"], r["rule"])
