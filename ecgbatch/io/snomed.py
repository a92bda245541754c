"""SNOMED-CT ECG diagnosis codes (Challenge `#Dx:` lines) -> readable condition names.

Uses the packaged mapping (ecgbatch/io/data/snomed_ct_ecg.csv, from the PhysioNet/CinC Challenge
2021 dx_mapping files, CC BY 4.0). Unknown codes are kept as they are, never dropped."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

_MAPPING = Path(__file__).resolve().parent / "data" / "snomed_ct_ecg.csv"


@lru_cache(maxsize=1)
def snomed_table() -> dict[str, tuple[str, str]]:
    """code -> (condition name, abbreviation)."""
    with open(_MAPPING, newline="", encoding="utf-8") as fh:
        return {r["SNOMEDCTCode"]: (r["Dx"], r["Abbreviation"]) for r in csv.DictReader(fh)}


def snomed_names(codes) -> list[str]:
    """Condition names for the codes, in order; a code with no known name stays as the code."""
    table = snomed_table()
    return [table[c][0] if c in table else c for c in (str(c).strip() for c in codes) if c]
