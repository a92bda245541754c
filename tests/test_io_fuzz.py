"""Seeded fuzzing of every reader (issue 9): a few hundred mutated real records, each read in a
child process with a time limit, must end in a valid record or a typed EcgReadError: no other
exception, no crash, no hang, no inf samples or impossible rates. ``bench/fuzz.py`` runs 10,000."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecgbatch.io.fuzz import build_seeds, counts_table, make_case, run_isolated
from ecgbatch.io.fuzz.seeds import Seed

HELPERS = Path(__file__).parent / "helpers"
N_CASES = 360  # 24 per seed


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return build_seeds(tmp_path_factory.mktemp("seeds"))


def test_seeds_cover_every_format_and_read_cleanly(seeds):
    from ecgbatch.io.fuzz import check_case

    assert {s.format for s in seeds} == {"wfdb", "wfdb_mat", "cpsc_mat", "numpy", "hdf5", "muse",
                                          "hl7_aecg"}
    assert {s.name: check_case(s.folder) for s in seeds} == {s.name: "ok" for s in seeds}


def test_cases_are_reproducible(seeds, tmp_path):
    def case_bytes(i, base, work):
        _, d, ops = make_case(seeds, i, base, work)
        return ops, {p.name: p.read_bytes() for p in sorted(d.iterdir())}

    for i in range(len(seeds)):
        assert case_bytes(i, 7, tmp_path / "a") == case_bytes(i, 7, tmp_path / "b")
    assert any(case_bytes(i, 7, tmp_path / "a") != case_bytes(i, 8, tmp_path / "b") for i in range(5))


def test_mutated_records_give_valid_records_or_typed_errors(seeds, tmp_path):
    results = run_isolated(seeds, N_CASES, base_seed=20261201, work=tmp_path, timeout_s=20, chunk=N_CASES)
    table, counts = counts_table(results)
    print(table)
    assert len(results) == N_CASES and [r.case for r in results] == list(range(N_CASES))
    bad = [r for r in results if r.column in ("untyped", "crash", "hang", "bad_value")]
    assert not bad, "\n".join(f"case {r.case} {r.seed}: {r.outcome} after {r.mutations}" for r in bad)
    for fmt, row in counts["by_format"].items():  # the fuzzer is not vacuous: both outcomes occur
        assert row.get("typed", 0) > 0, fmt
    assert sum(r.column == "ok" for r in results) > N_CASES // 10


def test_runner_counts_a_segfault_and_a_hang_and_goes_on(seeds, tmp_path, monkeypatch):
    from worker_crash_hook import CRASH_MARK, HANG_MARK  # noqa: F401 - tests/helpers on sys.path

    base = next(s for s in seeds if s.name == "npy")
    special = []
    for mark in (CRASH_MARK, HANG_MARK):
        d = tmp_path / f"seed{mark}"
        d.mkdir()
        for name in base.files:
            target = name.replace("318", f"318{mark}")
            (d / target).write_bytes((Path(base.folder) / name).read_bytes())
        special.append(Seed(f"npy{mark}", "numpy", str(d), base.dims))
    path = os.pathsep.join([str(HELPERS / "sitehook"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("ECGBATCH_TEST_READ_HOOK", "1")
    mix = [base, special[0], base, special[1]]
    results = run_isolated(mix, 8, base_seed=1, work=tmp_path / "w", timeout_s=5, chunk=8)
    outcomes = [r.outcome for r in results]
    assert [r.case for r in results] == list(range(8))
    assert outcomes[1].startswith("crash:") and outcomes[5].startswith("crash:")
    assert outcomes[3] == outcomes[7] == "hang"
    assert all(o.split(":")[0] in ("ok", "typed") for i, o in enumerate(outcomes) if i % 2 == 0)


@pytest.fixture(autouse=True)
def _helpers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))
