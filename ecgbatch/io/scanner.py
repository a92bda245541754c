"""Walk an archive of any size: group files into records, read them, account for every file.

Streaming: directories are walked with ``os.scandir`` one at a time (depth first, names sorted so
runs are reproducible); only the current directory's names are held in memory, and records are
read and yielded one by one. Every regular file ends up in exactly one place:

- a record (``RecordSource.files``: .hea + its signal files; .npy + its ``<name>.json``; ...),
- a failure (a source whose reading raised a typed ``EcgReadError``; its files are listed),
- ``ScanStats.ignored`` with the reason (WFDB annotation files such as LUDB's ``.i``/``.avf``,
  metadata and documentation such as .csv/.json/README/LICENSE, hidden files, unknown extensions).

Grouping rules per directory: each ``.hea`` claims the signal files its header names (when the
header cannot be parsed it claims the ``.dat``/``.mat`` of the same name and becomes a failure);
other files named ``<record>.<ext>`` are that record's annotations; an unclaimed ``.dat`` is a
failure (``missing_header``); an unclaimed ``.mat`` is a header-less MATLAB record (CPSC2018);
``.npy``/``.npz``/HDF5 files are records, containers with many records are expanded to one source
per record; ``.xml`` is routed by its root element.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from ecgbatch.io import hdf5, numpy_reader
from ecgbatch.io.detect import HDF5_EXT, NUMPY_EXT, xml_format
from ecgbatch.io.entries import Failure, RecordSource
from ecgbatch.io.errors import EcgReadError
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.record import Record
from ecgbatch.io.sidecar import DIR_SIDECAR
from ecgbatch.io.validate import typed_errors
from ecgbatch.io.wfdb_reader import signal_file_names

DOC_EXT = frozenset((".csv", ".tsv", ".txt", ".md", ".rst", ".pdf", ".html", ".htm", ".json",
                     ".yaml", ".yml", ".xlsx", ".xls", ".sha256", ".md5", ".log"))
DOC_NAMES = ("readme", "license", "licence", "annotators", "records", "sha256sums", "md5sums",
             "copying", "notice", "attribution", "changelog")
EXAMPLES_PER_REASON = 5


@dataclass
class ScanStats:
    """Counts for the summary; ``files == record_files + failure_files + sum(ignored.values())``."""

    files: int = 0
    directories: int = 0
    records: int = 0
    failures: int = 0
    record_files: int = 0
    failure_files: int = 0
    by_format: Counter = field(default_factory=Counter)
    failures_by_type: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)
    ignored_examples: dict = field(default_factory=dict)
    lead_sets: Counter = field(default_factory=Counter)

    def ignore(self, path: str, reason: str) -> None:
        self.files += 1
        self.ignored[reason] += 1
        ex = self.ignored_examples.setdefault(reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append(path)

    def accounted(self) -> int:
        return self.record_files + self.failure_files + sum(self.ignored.values())

    def to_dict(self) -> dict:
        return {"files": self.files, "directories": self.directories, "records": self.records,
                "failures": self.failures, "record_files": self.record_files,
                "failure_files": self.failure_files, "by_format": dict(self.by_format),
                "failures_by_type": dict(self.failures_by_type), "ignored": dict(self.ignored),
                "ignored_examples": self.ignored_examples,
                "lead_sets": {",".join(k): v for k, v in self.lead_sets.items()}}


def list_records(root, *, expand: bool = True, stats: ScanStats | None = None) -> Iterator[RecordSource]:
    """Every record source under ``root`` (a directory or one file), cheaply: headers are parsed to
    group files, signals are not read. Containers (CODE-15 HDF5, 3-D .npy) are opened for their
    record count when ``expand``. Sources that already know they will fail carry the error, so a
    consumer (e.g. a Ray dataset of paths) reads them and records the failure like any other."""
    stats = stats if stats is not None else ScanStats()
    root = os.fspath(root)
    if os.path.isfile(root):
        folder, name = os.path.split(root)
        stats.directories += 1
        yield from _expand(_group(folder or ".", [name], stats), expand)
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            yield RecordSource(folder, "directory", error_kind="unreadable",
                               error_message=f"{folder}: cannot list directory ({exc.strerror or exc})")
            continue
        stats.directories += 1
        names, subdirs = [], []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e.path)
                elif e.is_file():
                    names.append(e.name)
                else:
                    stats.ignore(e.path, "not a regular file (link to a directory, socket, ...)")
            except OSError:
                stats.ignore(e.path, "cannot stat")
        yield from _expand(_group(folder, sorted(names), stats), expand)
        stack.extend(sorted(subdirs, reverse=True))


def _group(folder: str, names: list[str], stats: ScanStats) -> Iterator[RecordSource]:
    present = set(names)
    by_lower = {n.lower(): n for n in names}
    claimed: set[str] = set()
    sources: list[RecordSource] = []
    record_stems: set[str] = set()
    headers: dict[str, tuple[list[str], EcgReadError | None]] = {}
    for name in names:
        if not name.lower().endswith(".hea"):
            continue
        stem = name[:-4]
        record_stems.add(stem)
        try:
            with typed_errors(os.path.join(folder, name)):
                headers[name] = (signal_file_names(os.path.join(folder, name)), None)
        except EcgReadError as exc:
            headers[name] = ([by_lower[stem.lower() + e] for e in (".dat", ".mat")
                              if stem.lower() + e in by_lower], exc)
    # segments of multi-segment records are read through their master header, not on their own
    segments = {f for files, _ in headers.values() for f in files if f.lower().endswith(".hea")}
    for name, (signal_files, err) in headers.items():
        if name in segments:
            continue
        path = os.path.join(folder, name)
        for seg in [f for f in signal_files if f in segments and f in headers]:
            signal_files = signal_files + headers[seg][0]
        files = tuple(dict.fromkeys((name, *[f for f in signal_files if f in present and f != name])))
        claimed.update(files)
        fmt = "wfdb_mat" if any(f.lower().endswith(".mat") for f in signal_files) else "wfdb"
        sources.append(RecordSource(path, fmt, files, error_kind=err.kind if err else None,
                                    error_message=str(err) if err else None))
    for name in names:
        if name in claimed:
            continue
        path = os.path.join(folder, name)
        root, ext = os.path.splitext(name)
        ext = ext.lower()
        is_aux = root in record_stems or name.split(".", 1)[0] in record_stems
        if name.startswith("."):
            stats.ignore(path, "hidden file")
        elif ext in NUMPY_EXT or ext in HDF5_EXT:
            side = root + ".json"
            files = (name, side) if side in present and side not in claimed else (name,)
            claimed.update(files)
            sources.append(RecordSource(path, "numpy" if ext in NUMPY_EXT else "hdf5", files))
        elif ext == ".xml":
            claimed.add(name)
            sources.append(_xml_source(path, name))
        elif is_aux:
            stats.ignore(path, "WFDB annotation or auxiliary file of a record")
        elif ext == ".dat":
            claimed.add(name)
            sources.append(RecordSource(path, "wfdb", (name,), error_kind="missing_header",
                                        error_message=f"{path}: WFDB signal file without its .hea header"))
        elif ext == ".mat":
            claimed.add(name)
            sources.append(RecordSource(path, "cpsc_mat", (name,)))
    for name in names:
        if name in claimed or name.startswith("."):
            continue
        path = os.path.join(folder, name)
        root, ext = os.path.splitext(name)
        if root in record_stems or name.split(".", 1)[0] in record_stems:
            continue  # counted above as an annotation / auxiliary file
        if name == DIR_SIDECAR:
            stats.ignore(path, f"directory settings ({DIR_SIDECAR})")
        elif ext.lower() in DOC_EXT or name.lower().split(".")[0] in DOC_NAMES:
            stats.ignore(path, f"metadata or documentation ({ext.lower() or name})")
        else:
            stats.ignore(path, f"not an ECG file type ({ext.lower() or 'no extension'})")
    yield from sources


def _xml_source(path: str, name: str) -> RecordSource:
    try:
        with typed_errors(path):
            return RecordSource(path, xml_format(path), (name,))
    except EcgReadError as exc:
        return RecordSource(path, "xml", (name,), error_kind=exc.kind, error_message=str(exc))


def _expand(sources: Iterator[RecordSource], expand: bool) -> Iterator[RecordSource]:
    for src in sources:
        if not expand or src.error_kind or src.format not in ("numpy", "hdf5"):
            yield src
            continue
        try:
            count_records = numpy_reader.count_records if src.format == "numpy" else hdf5.count_records
            with typed_errors(src.path):  # the record count is checked against the file's size
                n = count_records(src.path)
        except EcgReadError as exc:
            yield RecordSource(src.path, src.format, src.files, error_kind=exc.kind, error_message=str(exc))
            continue
        if n is None:
            yield src
        elif n == 0:
            yield RecordSource(src.path, src.format, src.files, error_kind="empty_file",
                               error_message=f"{src.path}: container holds 0 records")
        else:  # the container's files belong to its first record, so files are counted once
            for i in range(n):
                yield RecordSource(src.path, src.format, src.files if i == 0 else (), index=i)


class Scan:
    """Iterable over an archive: yields Record (or RecordHeader with ``headers_only``) or Failure.

    Each yielded Record/RecordHeader carries ``meta["scan"] = {"key", "format", "files"}`` so a
    manifest can say where it came from. ``stats`` fills in as the iteration proceeds. Errors never
    stop the scan: typed read errors become Failures with their kind; anything else (a reader bug,
    an HDF5 library error) becomes a Failure of type ``unexpected_error`` naming the exception.
    """

    def __init__(self, root, *, headers_only: bool = False, expand: bool = True, **read_options):
        self.root = os.fspath(root)
        self.headers_only = headers_only
        self.expand = expand
        self.read_options = read_options
        self.stats = ScanStats()

    def __iter__(self) -> Iterator[Record | RecordHeader | Failure]:
        for src in list_records(self.root, expand=self.expand, stats=self.stats):
            yield self.read_source(src)

    def read_source(self, src: RecordSource) -> Record | RecordHeader | Failure:
        st = self.stats
        try:
            item = src.read_header(**self.read_options) if self.headers_only else src.read(**self.read_options)
        except EcgReadError as exc:
            return self._failed(Failure.from_error(src, exc))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # never stop a scan; name the exception so it can be fixed
            return self._failed(Failure(src.path, "unexpected_error", f"{type(exc).__name__}: {exc}",
                                        src.format, src.files, src.key))
        fmt = item.format if isinstance(item, RecordHeader) else src.format
        if fmt == "wfdb" and "in .mat" in str(item.meta.get("storage", "")):
            fmt = "wfdb_mat"
        item.meta["scan"] = {"key": src.key, "format": fmt, "files": list(src.files)}
        st.records += 1
        st.files += len(src.files)
        st.record_files += len(src.files)
        st.by_format[fmt] += 1
        st.lead_sets[tuple(item.leads)] += 1
        return item

    def _failed(self, f: Failure) -> Failure:
        self.stats.failures += 1
        self.stats.files += len(f.files)
        self.stats.failure_files += len(f.files)
        self.stats.failures_by_type[f.error_type] += 1
        return f


def scan(root, *, headers_only: bool = False, expand: bool = True, **read_options) -> Scan:
    """Scan an archive (see ``Scan``); read_options go to ``read_record`` / ``read_header``."""
    return Scan(root, headers_only=headers_only, expand=expand, **read_options)


__all__ = ["Scan", "ScanStats", "scan", "list_records"]
