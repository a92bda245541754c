"""How `make test` splits the suite between its two xdist workers: the tests of the "heavy" group
(Ray, vLLM, slow, the session engine/server/Ray/LLaVA fixtures, the files that start engines or
clusters in subprocesses: tests/helpers/suite_groups.py) run on one worker in collection order;
the light tests run on either worker. Collection only: nothing is run, nothing starts.

    .venv/bin/python bench/suite_groups.py [PYTEST ARGS...]     # default: tests
    .venv/bin/python bench/suite_groups.py --files              # also one line per file
    .venv/bin/python bench/suite_groups.py --ids light > ids.txt    # node ids of one group, then
    .venv/bin/python -m pytest -n 2 --dist loadgroup @ids.txt       # run that group alone

Prints the count of each group, then the heavy files with the reasons that made them heavy.
Exit status: pytest's collection status."""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from helpers.suite_groups import HEAVY_GROUP, heavy_reason  # noqa: E402


class Split:
    def __init__(self):
        self.files = defaultdict(Counter)      # file -> {"heavy": n, "light": n}
        self.reasons = defaultdict(Counter)    # file -> {reason: n}
        self.ids = defaultdict(list)           # "heavy"/"light" -> node ids

    def pytest_collection_finish(self, session):
        for item in session.items:
            group = [m.args[0] for m in item.iter_markers("xdist_group")]
            kind = "heavy" if HEAVY_GROUP in group else "light"
            assert (kind == "heavy") == (heavy_reason(item) is not None), item.nodeid
            f = Path(str(item.path)).relative_to(REPO).as_posix()
            self.files[f][kind] += 1
            self.ids[kind].append(item.nodeid)
            if kind == "heavy":
                self.reasons[f][heavy_reason(item)] += 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", action="store_true", help="also list the light-only files")
    ap.add_argument("--ids", choices=("heavy", "light"), help="print only this group's node ids")
    opts, pytest_args = ap.parse_known_args(argv)
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
    heavy_files = sorted(f for f, c in split.files.items() if c["heavy"])
    light_files = sorted(f for f, c in split.files.items() if c["light"])
    print(f"heavy (one worker): {total['heavy']} tests in {len(heavy_files)} files")
    print(f"light (either worker): {total['light']} tests in {len(light_files)} files")
    mixed = [f for f in heavy_files if split.files[f]["light"]]
    print(f"files with tests in both groups: {len(mixed)}\n")
    print("heavy files (heavy/light tests; why heavy):")
    for f in heavy_files:
        c = split.files[f]
        why = "; ".join(f"{r} ({n})" for r, n in split.reasons[f].most_common())
        print(f"  {f}  {c['heavy']}/{c['light']}  {why}")
    if opts.files:
        print("\nlight-only files (tests):")
        for f in light_files:
            if not split.files[f]["heavy"]:
                print(f"  {f}  {split.files[f]['light']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
