"""The fixed test fold (ecgbatch.testfold): the committed member list is what the rule gives on
../shared/data, no training source of any trainer (CoCa pairs, probe fitting, the instruction
builder) yields a test-fold record, no patient straddles the split, and an ECG held in two
folders is counted once."""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import replace

import pytest

from ecgbatch import testfold
from ecgbatch.training import texts as T
from ecgbatch.training.instruct import build_instruct, load_sources
from ecgbatch.training.job_config import load_job_config
from ecgbatch.training.pairs import record_keys, split_record_sources
from ecgbatch.training.probes import labelled_records

CONFIGS = ("configs/coca-mini.yaml",)


def test_rule_without_data():
    assert testfold.ecg_key("ptbxl", "/x/records100/00000/00017_lr.hea") == "ptbxl:17"
    assert testfold.ecg_key("ptbxl", "17.npy") == "ptbxl:17"
    assert testfold.ecg_key("cinc2021", "HR00017") == "ptbxl:17"     # the same PTB-XL ECG
    assert testfold.ecg_key("ludb", "/d/ludb/data/7.hea") == "ludb:7"
    with pytest.raises(testfold.TestFoldError):
        testfold.ecg_key("mimic", "1")
    # the hash rule is a stable function of the key, and takes about its share
    fr = [testfold.hashed_fraction(f"ludb:{i}") for i in range(2000)]
    assert fr == [testfold.hashed_fraction(f"ludb:{i}") for i in range(2000)]
    share = sum(f < testfold.HASHED_SHARE for f in fr) / len(fr)
    assert abs(share - testfold.HASHED_SHARE) < 0.04


def test_likelihood_phrasing():
    st = T.ScpStatements({"SR": "sinus rhythm", "LVH": "left ventricular hypertrophy", "IMI": "inferior mi",
                          "ASMI": "anteroseptal mi", "NORM": "normal ecg"},
                         frozenset({"SR"}), frozenset({"LVH", "IMI", "ASMI", "NORM"}))
    text = T.ptbxl_text({"SR": 0.0, "LVH": 50.0, "IMI": 15.0, "ASMI": 35.0, "NORM": 80.0}, st)
    assert text == ("sinus rhythm. normal ecg. probable left ventricular hypertrophy. "
                    "possible anteroseptal mi. possible inferior mi")


@pytest.mark.shared
def test_member_list_is_the_rule(shared):
    with open(testfold.MEMBERS_CSV, newline="") as fh:
        committed = list(csv.DictReader(fh))
    assert committed == testfold.compute_members(shared)
    by = defaultdict(int)
    for r in committed:
        by[r["dataset"]] += 1
    # PTB-XL fold 9 of both folders, about 30 % of LUDB's 100 and the Challenge's 127
    assert by["ptbxl"] == 261 and 15 <= by["ludb"] <= 45 and 20 <= by["cinc2021"] <= 60


@pytest.mark.shared
def test_no_ptbxl_patient_straddles(shared_data):
    fold = defaultdict(set)
    for rel in ("ptbxl2k/ptbxl_database.csv", "ptbxl/ptbxl_database_subset.csv"):
        with open(shared_data / rel, newline="") as fh:
            for r in csv.DictReader(fh):
                fold[r["patient_id"]].add(testfold.in_test_fold("ptbxl", r["ecg_id"]))
                assert testfold.in_test_fold("ptbxl", r["ecg_id"]) == (r["strat_fold"] == "9")
    assert all(len(v) == 1 for v in fold.values())
    assert sum(True in v for v in fold.values()) > 200


@pytest.mark.shared
@pytest.mark.parametrize("config", CONFIGS)
def test_training_sources_never_yield_the_test_fold(config):
    specs = load_job_config(config).data.sources
    names = {s.name for s in specs}
    assert {"ptbxl2k", "ptbxl", "ludb", "cinc2021"} <= names
    train, test = split_record_sources(specs, "train"), split_record_sources(specs, "test")
    tr_keys, tr_groups = record_keys(specs, "train")
    te_keys, te_groups = record_keys(specs, "test")
    for part in (train, test):       # each ECG once
        assert sum(len(r) for _, r in part) == len({testfold.ecg_key(s.test_dataset, x.path)
                                                    for s, r in part for x in r})
    assert tr_keys and te_keys and not tr_keys & te_keys
    assert not tr_groups & te_groups, "a patient on both sides of the test split"
    assert te_keys == testfold.members()
    # evaluation of given records ("all") keeps both parts, each ECG once
    assert sum(len(r) for _, r in split_record_sources(specs, "all")) == len(tr_keys) + len(te_keys)
    assert not any(testfold.in_test_fold(s.test_dataset, rs.path) for s, rss in train for rs in rss)
    counts = {s.name: len(r) for s, r in train}
    # 1,732 + 250 PTB-XL records, 19 held twice: each ECG once, from ptbxl2k (listed first)
    te_counts = {s.name: len(r) for s, r in test}
    assert counts["ptbxl2k"] + counts["ptbxl"] + te_counts["ptbxl2k"] + te_counts["ptbxl"] == 1732 + 250 - 19
    assert counts["ptbxl2k"] == 1732 - 242


@pytest.mark.shared
def test_probe_and_instruct_builders_leave_the_test_fold_out(shared):
    """The real builders, on the first records of each source (limit applies after the test
    fold is taken out, so these are training records)."""
    specs = [replace(s, limit=6) for s in load_job_config("configs/coca-mini.yaml").data.sources]
    from ecgbatch.signal.config import PreprocessConfig

    rec = labelled_records(specs, PreprocessConfig())
    assert len(rec) == 24 and len(set(rec.group)) == 24
    ds = {s.name: s.test_dataset for s in specs}
    assert not any(testfold.in_test_fold(ds[s], p) for s, p in zip(rec.source, rec.path))
    test = labelled_records(specs, PreprocessConfig(), part="test")
    assert all(testfold.in_test_fold(ds[s], p) for s, p in zip(test.source, test.path))

    isrcs = load_sources("configs/instruct-shared.yaml")
    isrcs = [replace(s, spec=replace(s.spec, limit=6)) for s in isrcs]
    built = build_instruct(isrcs, seed=0, val_fraction=0.3, measure_method=None)
    ids = {(it["meta"]["source"], it["meta"]["record_id"]) for it in built.items}
    ds = {s.spec.name: s.spec.test_dataset for s in isrcs}
    assert len(ids) == 24 and not any(testfold.in_test_fold(ds[s], r) for s, r in ids)
    test_items = build_instruct(isrcs, seed=0, measure_method=None, part="test").items
    assert test_items and all(testfold.in_test_fold(ds[it["meta"]["source"]], it["meta"]["record_id"])
                              for it in test_items)
    ptb = [r for r in built.records if r.source == "ptbxl2k"]
    assert ptb and all(r.scp_codes for r in ptb)       # likelihoods kept in the metadata
