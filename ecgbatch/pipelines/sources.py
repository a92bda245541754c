"""Where records live: local folders or pyarrow filesystem URIs (s3://, gs://, file://).

The embed pipeline identifies a record by its ``source`` (a local absolute path, or the URI of
its main file) and names it by ``record_id`` (the archive-relative path without its suffix, so
ids are unique inside an archive even when two datasets reuse a file name).

Remote records are copied (with their sibling files, e.g. a WFDB header's .dat/.mat) into a
temporary folder and read there by ecgbatch.io, so every reader works on every filesystem.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from ecgbatch.io import list_records
from ecgbatch.io.entries import RecordSource


def is_uri(path: str) -> bool:
    return "://" in str(path)


def normalize_root(archive: str | os.PathLike) -> str:
    """A local archive -> its absolute path; a URI stays a URI (without a trailing slash)."""
    s = str(archive)
    if is_uri(s):
        return s.rstrip("/")
    p = Path(s).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"archive does not exist: {s!r}")
    return str(p)


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI."""
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with a useful message
        raise ValueError(f"cannot open archive URI {uri!r}: {exc}") from exc


def relative(source: str, root: str) -> str:
    """Archive-relative POSIX path of a source."""
    if is_uri(root):
        rel = source[len(root):].lstrip("/") if source.startswith(root) else source
        return rel
    try:
        return PurePosixPath(Path(source).relative_to(root)).as_posix()
    except ValueError:
        return Path(source).name


def record_ids(sources: list[str], root: str) -> dict[str, str]:
    """source -> record id: archive-relative path without suffix; a suffix is kept where two
    sources in the list would otherwise share an id."""
    stems: dict[str, list[str]] = {}
    for s in sources:
        rel = relative(s, root)
        base, sep, idx = rel.partition("#")  # container records: "file.h5#3"
        stem = posixpath.splitext(base)[0] + sep + idx
        stems.setdefault(stem, []).append(s)
    out = {}
    for stem, group in stems.items():
        if len(group) == 1:
            out[group[0]] = stem
        else:
            for s in group:
                out[s] = relative(s, root)
    return out


def source_to_json(source) -> str:
    """A RecordSource (or a plain path) -> the JSON string shipped through Ray Data."""
    if isinstance(source, str):
        return json.dumps({"path": source})
    return json.dumps(source.to_dict(), sort_keys=True)


def source_from_json(blob: str):
    d = json.loads(blob)
    d["files"] = tuple(d.get("files") or ())
    return RecordSource(**d) if "format" in d else RecordSource(path=d["path"], format="")


_MAIN_EXT = (".hea", ".xml", ".npy", ".npz", ".h5", ".hdf5", ".hdf", ".he5", ".mat")
_SIDECAR = "ecgbatch.json"  # ecgbatch.io.sidecar.DIR_SIDECAR: folder-wide settings (fs, leads)


def list_remote(uri: str) -> list:
    """RecordSources of an archive behind a pyarrow filesystem URI: files grouped per folder by
    stem, the main file picked by extension (header first); the format is detected after the
    record's files were copied (see local_source). Files no reader takes are not listed."""
    from pyarrow import fs as pafs

    fs, base = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=False))
    folders: dict[str, list[str]] = {}
    for i in infos:
        if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith("."):
            folders.setdefault(posixpath.dirname(i.path), []).append(posixpath.basename(i.path))
    out = []
    for folder, names in sorted(folders.items()):
        by_stem: dict[str, list[str]] = {}
        for n in names:
            by_stem.setdefault(posixpath.splitext(n)[0], []).append(n)
        side = (_SIDECAR,) if _SIDECAR in names else ()
        for stem, group in sorted(by_stem.items()):
            exts = {posixpath.splitext(n)[1].lower(): n for n in group}
            main = next((exts[e] for e in _MAIN_EXT if e in exts), None)
            if main is None and ".dat" in exts:
                main = exts[".dat"]  # the reader reports the missing header as a typed error
            if main is None or main == _SIDECAR:
                continue
            path = _join_uri(uri, base, posixpath.join(folder, main))
            out.append(RecordSource(path, "", tuple(sorted(group)) + side))
    return out


def _join_uri(uri: str, base: str, path: str) -> str:
    """The URI of ``path`` (a path inside the filesystem of ``uri`` whose root is ``base``)."""
    root = uri.rstrip("/")
    rel = path[len(base):].lstrip("/") if path.startswith(base) else path
    return f"{root}/{rel}" if rel else root


@contextmanager
def local_source(source) -> Iterator:
    """The RecordSource itself when local; for a URI, a copy of it whose files (``files``: names
    in the record's folder) were downloaded to a temporary folder, format detected there."""
    from dataclasses import replace

    if not is_uri(source.path):
        yield source if source.format else replace(source, format=None)
        return

    fs, path = filesystem(source.path)
    parent, name = posixpath.split(path)
    names = list(source.files) or [name]
    tmp = tempfile.mkdtemp(prefix="ecgbatch-rec-")
    try:
        for n in names:
            with fs.open_input_stream(posixpath.join(parent, n)) as fin, \
                    open(os.path.join(tmp, n), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        yield replace(source, path=os.path.join(tmp, name), format=source.format or None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_sources(root: str) -> list:
    """Every RecordSource of an archive, via ecgbatch.io's cheap listing (no signal decoding);
    pyarrow filesystem URIs are listed by sources.list_remote."""
    if is_uri(root):
        return list_remote(root)

    return list(list_records(root))
