"""Seeded fuzzing of the readers (``tests/test_io_fuzz.py`` runs a few hundred cases,
``bench/fuzz.py`` / ``make fuzz`` thousands): mutated real records of every format must end in a
valid Record or a typed EcgReadError, never another exception, a crash, a hang or bad values.

    seeds = build_seeds(tmp)                                  # ecgbatch.io.fuzz.seeds
    results = run_isolated(seeds, 1000, base_seed=0, work=tmp / "work")
    print(counts_table(results)[0])
"""
from ecgbatch.io.fuzz.runner import (CaseResult, check_case, counts_table, make_case, record_problem,
                                     run_isolated)
from ecgbatch.io.fuzz.seeds import Seed, build_seeds

__all__ = ["Seed", "build_seeds", "CaseResult", "make_case", "check_case", "record_problem",
           "run_isolated", "counts_table"]
