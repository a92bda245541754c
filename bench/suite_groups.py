"""How `make test` splits the suite between its two xdist workers: the "ray" lane and the "engine"
lane (tests/helpers/suite_groups.py) each run on one worker in collection order; the light tests
run on whichever worker is free. Collection only: nothing is run, nothing starts.

    .venv/bin/python bench/suite_groups.py [PYTEST ARGS...]     # default: tests
    .venv/bin/python bench/suite_groups.py --files              # also the light-only files
    .venv/bin/python bench/suite_groups.py --ids ray > ids.txt  # node ids of one lane, then
    .venv/bin/python -m pytest @ids.txt                         # run that lane alone (serially)
    ECGBATCH_LANE_LOG=lanes.tsv .venv/bin/python -m pytest -n 2 --dist loadgroup tests
    .venv/bin/python bench/suite_groups.py --log lanes.tsv      # time per worker and per lane

Prints the count of each lane, then each lane's files with the reasons that put them there.
Exit status: pytest's collection status."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from helpers.suite_groups import LANES, lane_of, lane_reason  # noqa: E402

LIGHT = "light"


class Split:
    def __init__(self):
        self.files = defaultdict(Counter)      # file -> {lane or "light": n}
        self.reasons = defaultdict(Counter)    # file -> {reason: n}
        self.ids = defaultdict(list)           # lane or "light" -> node ids

    def pytest_collection_finish(self, session):
        for item in session.items:
            lane = lane_of(item) or LIGHT
            found = lane_reason(item)
            assert (found[0] if found else LIGHT) == lane, item.nodeid
            f = Path(str(item.path)).relative_to(REPO).as_posix()
            self.files[f][lane] += 1
            self.ids[lane].append(item.nodeid.rsplit("@", 1)[0] if lane != LIGHT else item.nodeid)
            if found:
                self.reasons[f][f"{lane}: {found[1]}"] += 1


def print_log(path: Path) -> None:
    """Sum a $ECGBATCH_LANE_LOG file: per worker (busy span, summed test time) and per lane."""
    rows = list(csv.reader(path.open(), delimiter="\t"))
    per_worker, span, per_lane, tests = Counter(), {}, Counter(), defaultdict(set)
    failed = []
    for worker, lane, _when, outcome, start, stop, nodeid in rows:
        t0, t1 = float(start), float(stop)
        if outcome == "failed":
            failed.append(f"{worker} {lane} {_when}: {nodeid}")
        per_worker[worker] += t1 - t0
        lo, hi = span.get(worker, (t0, t1))
        span[worker] = (min(lo, t0), max(hi, t1))
        per_lane[(worker, lane)] += t1 - t0
        tests[(worker, lane)].add(nodeid)
    first = min(lo for lo, _ in span.values())
    for worker in sorted(per_worker):
        lo, hi = span[worker]
        print(f"{worker}: busy {lo - first:.0f}-{hi - first:.0f} s after the first test, "
              f"tests {per_worker[worker]:.0f} s")
        for (w, lane), secs in sorted(per_lane.items()):
            if w == worker:
                print(f"  {lane}: {len(tests[(w, lane)])} tests, {secs:.0f} s")
    print(f"failed phases: {len(failed)}", *failed, sep="\n  ")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", action="store_true", help="also list the light-only files")
    ap.add_argument("--ids", choices=(*LANES, LIGHT), help="print only this lane's node ids")
    ap.add_argument("--log", type=Path, help="sum a $ECGBATCH_LANE_LOG file instead")
    opts, pytest_args = ap.parse_known_args(argv)
    if opts.log:
        print_log(opts.log)
        return 0
    split, out = Split(), io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *(pytest_args or ["tests"])],
                         plugins=[split])
    if rc not in (0, 5):
        print(out.getvalue()[-4000:])
        return int(rc)
    if opts.ids:
        print("\n".join(split.ids[opts.ids]))
        return 0
    total = Counter()
    for c in split.files.values():
        total.update(c)
    for lane in (*LANES, LIGHT):
        files = sum(1 for c in split.files.values() if c[lane])
        where = "either worker" if lane == LIGHT else "one worker"
        print(f"{lane} ({where}): {total[lane]} tests in {files} files")
    for lane in LANES:
        print(f"\n{lane} lane files ({'/'.join((*LANES, LIGHT))} tests; why):")
        for f in sorted(f for f, c in split.files.items() if c[lane]):
            c = split.files[f]
            why = "; ".join(f"{r} ({n})" for r, n in split.reasons[f].most_common() if r.startswith(lane))
            print(f"  {f}  {'/'.join(str(c[k]) for k in (*LANES, LIGHT))}  {why}")
    if opts.files:
        print("\nlight-only files (tests):")
        for f in sorted(f for f, c in split.files.items() if set(c) == {LIGHT}):
            print(f"  {f}  {split.files[f][LIGHT]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
