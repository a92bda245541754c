"""ECG-Chat's ECG-Instruct JSON read as is: paths resolved against an archive root and read by
ecgbatch.io (any format); each bad item raises a typed error naming the file, item and id."""
from __future__ import annotations

import json

import pytest

from ecgbatch.training.instruct_format import (InstructDataError, check_conversations, read_instruct,
                                               write_jsonl)


def _item(i, ecg, first="<ecg>\nWhat is the rhythm?", answer="Atrial fibrillation."):
    return {"id": str(i), "ecg": ecg,
            "conversations": [{"from": "human", "value": first}, {"from": "gpt", "value": answer}]}


def test_ecgchat_json_resolves_against_the_archive_root(tmp_path, sample_archive):
    items = [_item(1, "ludb/1"),                                   # WFDB name without extension
             _item(2, "cinc2021/A0689.hea", first="Describe this ECG.\n<ecg>"),
             _item(3, "cpsc2018/A1980.mat"),
             {**_item(4, "cinc2021/E00271"), "conversations": [
                 {"from": "human", "value": "<ecg>\nIs there a block?"}, {"from": "gpt", "value": ": Yes."},
                 {"from": "human", "value": "Which one?"}, {"from": "gpt", "value": "A right bundle branch block."}]}]
    f = tmp_path / "ecg_instruct.json"
    f.write_text(json.dumps(items))
    got = read_instruct(f, ecg_root=sample_archive)
    assert [it.id for it in got] == ["1", "2", "3", "4"]
    assert got[3].conversations[1]["value"] == ": Yes."       # ECG-Chat's stray prefixes kept
    recs = [it.read_ecg() for it in got]
    assert [r.signal.shape[0] for r in recs] == [12, 12, 12, 12]
    assert recs[0].fs == 500 and recs[0].record_id == "1"
    # the same items as JSON Lines, with absolute paths, no root needed
    absolute = [{**d, "ecg": str(sample_archive / d["ecg"])} for d in items]
    out = write_jsonl(absolute, tmp_path / "x.jsonl")
    again = read_instruct(out)
    assert [it.ecg_path for it in again] == [it.ecg_path for it in got]


@pytest.mark.parametrize("item,kind,match", [
    (_item(7, "ludb/999"), "missing_ecg", "not found"),
    (_item(7, "ludb/1", first="What is the rhythm?"), "no_ecg_token", "exactly once"),
    (_item(7, "ludb/1", first="<ecg> <ecg> rhythm?"), "no_ecg_token", "exactly once"),
    ({"id": "7", "ecg": "ludb/1", "conversations": [{"from": "gpt", "value": "<ecg>\nHi"},
                                                   {"from": "human", "value": "?"}]}, "bad_turns", "alternate"),
    ({"id": "7", "ecg": "ludb/1", "conversations": [{"from": "human", "value": "<ecg>\nHi"}]}, "bad_turns",
     "at least 2"),
    ({"id": "7", "ecg": "ludb/1", "conversations": [{"from": "human", "value": "<ecg>\nHi"},
                                                   {"from": "gpt", "value": "ok"},
                                                   {"from": "human", "value": "<ecg> again"},
                                                   {"from": "gpt", "value": "ok"}]}, "no_ecg_token", "appears again"),
    ({"id": "7", "conversations": []}, "bad_item", "missing key"),
])
def test_bad_items_raise_typed_errors(tmp_path, sample_archive, item, kind, match):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([_item(1, "ludb/1"), item]))
    with pytest.raises(InstructDataError, match=match) as ei:
        read_instruct(f, ecg_root=sample_archive)
    assert ei.value.kind == kind and ei.value.index == 1 and ei.value.item_id == "7"
    assert str(f) in str(ei.value) and "id 7" in str(ei.value)
    items, errors = read_instruct(f, ecg_root=sample_archive, on_error="collect")
    assert [it.id for it in items] == ["1"] and [e.kind for e in errors] == [kind]


def test_file_level_errors_and_split_filter(tmp_path, sample_archive):
    f = tmp_path / "x.json"
    f.write_text(json.dumps({"id": 1}))
    with pytest.raises(InstructDataError, match="must be a list"):
        read_instruct(f)
    g = tmp_path / "y.jsonl"
    g.write_text(json.dumps(_item(1, "ludb/1")) + "\n{not json\n")
    with pytest.raises(InstructDataError, match="line 2 is not JSON"):
        read_instruct(g, ecg_root=sample_archive)
    with pytest.raises(FileNotFoundError):
        read_instruct(tmp_path / "nope.json")
    h = write_jsonl([{**_item(1, "ludb/1"), "meta": {"split": "train"}},
                     {**_item(2, "ludb/1"), "meta": {"split": "val"}}], tmp_path / "s.jsonl")
    assert [it.id for it in read_instruct(h, sample_archive, split="val")] == ["2"]
    assert read_instruct(h, sample_archive, check_files=False)[0].meta == {"split": "train"}
    check_conversations(_item(1, "x")["conversations"], "here")
