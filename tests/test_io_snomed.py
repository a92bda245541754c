"""Challenge `#Dx:` SNOMED-CT codes get readable names beside the codes (packaged mapping)."""
from __future__ import annotations

import csv

from ecgbatch.io import read_record
from ecgbatch.io.snomed import snomed_names, snomed_table


def test_challenge_record_has_condition_names(sample_archive):
    rec = read_record(sample_archive / "cinc2021" / "A1041.hea")
    assert rec.meta["dx_codes"] == ["164889003", "164909002"]
    assert rec.meta["dx_names"] == ["atrial fibrillation", "left bundle branch block"]


def test_unknown_codes_are_kept_not_dropped():
    assert snomed_names(["164890007", "999999999", " "]) == ["atrial flutter", "999999999"]


def test_packaged_table_covers_the_challenge_mapping(shared_data):
    """Every code of the Challenge's own dx_mapping files is in the packaged table; the scored
    file's names (read first) are the ones used."""
    table = snomed_table()
    codes = set()
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        with open(shared_data / "cinc2021" / name, newline="") as fh:
            for row in csv.DictReader(fh):
                code = row["SNOMEDCTCode"].strip()
                if not code:
                    continue
                assert code in table, code
                if name == "dx_mapping_scored.csv":
                    assert table[code][0] == row["Dx"].strip()
                codes.add(code)
    assert len(codes) > 100 and set(table) == codes
