"""Cohort filter language (ecgbatch.index.filters): valid expressions against a hand-built
pyarrow table with hand-computed masks, the real PTB-XL/CinC metadata (shared data) checked
against plain-Python evaluation, and injection attempts that must be rejected unevaluated."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ecgbatch.index import UnknownColumnError, WhereExpressionError, parse_where, where_mask


@pytest.fixture(scope="module")
def table():
    # 6 hand-made rows; expected masks below are computed by hand from these values
    return pa.table({
        "age": pa.array([72.0, 55.0, None, 61.0, 18.0, float("nan")]),
        "sex": pa.array(["F", "M", "F", None, "F", "M"]),
        "diagnoses": pa.array(["Atrial fibrillation", "sinus rhythm", "atrial FIBRILLATION, LVH",
                               None, "sinus bradycardia", "1st degree AV block"]),
        "dx_codes": pa.array(["164889003,59118001", "426783006", "164889003", "",
                              "426177001", "1648890030"]),
        "qtc_ms": pa.array([480, 410, 500, None, 390, 455], pa.int32()),
        "paced": pa.array([False, False, True, False, None, True]),
        "labels": pa.array([["AF", "LVH"], ["SR"], ["af"], None, [], ["AFL", "1AVB"]],
                           pa.list_(pa.string())),
    })


CASES = [
    ("age >= 60 and sex == 'F'", [1, 0, 0, 0, 0, 0]),
    ("age >= 60 or sex == 'F'", [1, 0, 1, 1, 1, 0]),
    ("diagnoses contains 'fibrillation'", [1, 0, 1, 0, 0, 0]),
    ("not diagnoses contains 'fibrillation'", [0, 1, 0, 0, 1, 1]),  # null diagnoses: unknown
    ("dx_codes contains '164889003'", [1, 0, 1, 0, 0, 1]),  # substring: also 1648890030
    ("has_code(dx_codes, '164889003')", [1, 0, 1, 0, 0, 0]),  # whole code only
    ("sex in ('F', 'X')", [1, 0, 1, 0, 1, 0]),
    ("sex not in ['F']", [0, 1, 0, 0, 0, 1]),
    ("age is null", [0, 0, 1, 0, 0, 1]),  # NaN counts as missing
    ("age is not null and qtc_ms > 450", [1, 0, 0, 0, 0, 0]),
    ("age IS NULL OR qtc_ms >= 455", [1, 0, 1, 0, 0, 1]),
    ("(age > 60 or sex = 'M') and not (qtc_ms < 420)", [1, 0, 0, 0, 0, 1]),
    ("50 <= age < 62", [0, 1, 0, 1, 0, 0]),
    ("paced", [0, 0, 1, 0, 0, 1]),
    ("paced == False", [1, 1, 0, 1, 0, 0]),
    ("qtc_ms in (390, 500)", [0, 0, 1, 0, 1, 0]),
    ("age > -1 and startswith(diagnoses, 'sinus')", [0, 1, 0, 0, 1, 0]),
    ("lower(sex) == 'f'", [1, 0, 1, 0, 1, 0]),
    ("isnull(sex) or notnull(sex) and sex == 'M'", [0, 1, 0, 1, 0, 1]),
    ("labels contains 'AF'", [1, 0, 0, 0, 0, 0]),  # list column: exact element
    ("has_code(labels, '1AVB') or labels is null", [0, 0, 0, 1, 0, 1]),
    ("not labels contains 'SR'", [1, 0, 1, 0, 1, 1]),
]


@pytest.mark.parametrize("expr,expected", CASES)
def test_valid_expressions_give_hand_computed_masks(table, expr, expected):
    np.testing.assert_array_equal(where_mask(table, expr), np.array(expected, bool))


def test_no_filter_selects_everything(table):
    assert where_mask(table, None).all() and len(where_mask(table, None)) == table.num_rows


INJECTIONS = [
    "__import__('os').system('echo pwned')",
    "__import__('os')",
    "age.__class__",
    "sex.upper() == 'F'",
    "(lambda: 1)()",
    "lambda: True",
    "[x for x in age]",
    "age[0] > 1",
    "open('/etc/passwd')",
    "eval('1')",
    "getattr(age, 'real') > 0",
    "contains(sex, 'F', **{'a': 1})",
    "age + 1 > 2",
    "age if True else sex",
    "(x := 1)",
    "f'{age}' == '1'",
    "age @ 'x'",
    "_secret == 1",
]


@pytest.mark.parametrize("expr", INJECTIONS)
def test_injection_attempts_are_rejected(table, expr):
    with pytest.raises(WhereExpressionError):
        where_mask(table, expr)


def test_rejected_before_evaluation():
    # parse_where needs no table at all: validation happens on the syntax tree alone
    with pytest.raises(WhereExpressionError, match="not allowed"):
        parse_where("__import__('os').system('x')")
    parse_where("age >= 60 and sex == 'F'")  # valid: no error


def test_unknown_column_lists_available_columns(table):
    with pytest.raises(UnknownColumnError) as e:
        where_mask(table, "heart_rate > 100")
    msg = str(e.value)
    assert "heart_rate" in msg and all(c in msg for c in table.column_names)
    assert e.value.available == table.column_names


@pytest.mark.parametrize("expr,fragment", [
    ("sex == 1", "cannot compare"),
    ("age", "not a condition"),
    ("age >=", "cannot parse"),
    ("", "empty"),
    ("age is 5", "'is'"),
    ("age in age", "'in'"),
    ("contains(age, 'x')", "string column"),
])
def test_bad_expressions_have_clear_errors(table, expr, fragment):
    with pytest.raises(WhereExpressionError, match=fragment):
        where_mask(table, expr)


def test_overlong_expression_rejected(table):
    with pytest.raises(WhereExpressionError, match="limit"):
        where_mask(table, " or ".join(["age > 1"] * 1000))


def test_real_metadata_matches_python(shared_data):
    """PTB-XL + CinC 2021 metadata (real ages, sexes, reports, SCP/SNOMED codes)."""
    from ecgbatch.index.random_projection import real_ecg_table

    t = real_ecg_table(shared_data, dim=16).drop_columns(["embedding"])
    rows = t.to_pylist()
    got = where_mask(t, "age >= 60 and sex == 'F' and diagnoses contains 'fibrillation'")
    want = [r["age"] is not None and r["age"] >= 60 and r["sex"] == "F"
            and r["diagnoses"] is not None and "fibrillation" in r["diagnoses"].lower() for r in rows]
    np.testing.assert_array_equal(got, want)
    assert 0 < got.sum() < len(rows)
    got = where_mask(t, "has_code(dx_codes, '164889003')")  # SNOMED atrial fibrillation
    want = [r["dx_codes"] is not None and "164889003" in r["dx_codes"].split(",") for r in rows]
    np.testing.assert_array_equal(got, want)
    assert got.sum() > 0
