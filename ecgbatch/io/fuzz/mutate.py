"""Seeded mutators: each takes a ``random.Random`` and a file's bytes and returns new bytes.

Generic (any file): bit flips, byte runs (0x00 / 0xFF / 0x7F / 0x80 / random) mostly in the first
4 KiB where headers live, truncation, appended junk, splices within the file. Structure-aware:
numbers in text (WFDB headers, sidecars, XML, the .npy header) replaced by extreme values (0,
-1, 1e308, NaN, inf, 1e-320, 2**63, 50 nines, garbage); binary integers that equal the seed's
dimensions (channel, sample and record counts as they appear in MAT, HDF5 and .npy headers)
replaced by 0, 1, 2**31-1, 2**32-1 or 10,000,000; float samples overwritten with NaN / inf /
1e308 / denormals; malformed sidecars (bad JSON, wrong types, deep nesting); malformed XML
(entities, unknown encodings, dropped tags, deep nesting, duplicated leads); and a deleted
companion file. ``mutate_case`` applies one to three of them to one or more files of a record.
"""
from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import numpy as np

_NUMBER = re.compile(rb"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_TEXT_VALUES = (b"0", b"-1", b"1", b"1e308", b"-1e308", b"nan", b"NaN", b"inf", b"-inf", b"1e-320",
                b"2147483648", b"4294967296", b"9223372036854775808", b"9" * 50, b"", b"abc",
                b"0.0", b"-0", b"1e-9", b"65536", b"10000000", b"1" + b"0" * 400)
_INTS = (0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF, 10_000_000, 0x80000000, 0xFFFF, 1 << 40)
_FLOATS = (float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 3.5e38, 1e-320, 0.0, -0.0)
_BAD_SIDECARS = (b"", b"{", b"[]", b"null", b'"fs"', b"{\"fs\": }", b"\xff\xfe{}",
                 b"[" * 50000 + b"]" * 50000, b'{"fs": "fast"}', b'{"fs": [500, 500]}',
                 b'{"fs": -500}', b'{"fs": 1e400}', b'{"fs": 0}', b'{"fs": null, "leads": 12}',
                 b'{"leads": "I"}', b'{"leads": [1, 2, 3]}', b'{"leads": []}', b'{"layout": "diagonal"}',
                 b'{"meta": [1, 2]}', b'{"units": {"a": 1}}', b'{"fs": true}', b'{"fs": 1e-300}',
                 b'{"fs": 500, "leads": ["I"], "layout": "leads_first"}')
_XML_EDITS = (b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>',
              b'<?xml version="1.0" encoding="no-such-encoding"?>',
              b'<?xml version="1.0" encoding="utf-16"?>', b"<a>" * 20000, b"&undefined;",
              b"<![CDATA[", b"\x00", b"</RestingECG>", b"<?xml-stylesheet?>")


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return b"\x01"
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8, 32))):
        i = _position(rng, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def byte_run(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return b"\xff" * 8
    b = bytearray(data)
    i, n = _position(rng, len(b)), rng.choice((1, 2, 4, 8, 16))
    fill = rng.choice((b"\x00", b"\xff", b"\x7f", b"\x80", None))
    run = bytes(rng.randrange(256) for _ in range(n)) if fill is None else fill * n
    b[i:i + n] = run[:len(b) - i]
    return bytes(b)


def truncate(rng: random.Random, data: bytes) -> bytes:
    n = len(data)
    return data[:rng.choice((0, rng.randrange(max(n, 1)), rng.randrange(min(n, 600) or 1), n - 1))]


def append(rng: random.Random, data: bytes) -> bytes:
    if data and rng.random() < 0.5:
        i = rng.randrange(len(data))
        return data + data[i:i + rng.randrange(1, 4096)]
    return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))


def splice(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 16:
        return data[::-1]
    n = rng.randrange(1, min(len(data) // 2, 4096) + 1)
    src, dst = rng.randrange(len(data) - n), _position(rng, len(data) - n)
    return data[:dst] + data[src:src + n] + data[dst + n:]


def text_number(rng: random.Random, data: bytes) -> bytes:
    """Replace one to three numbers written as text (headers, sidecars, XML, .npy header)."""
    head = data[:1 << 16]
    spans = [m.span() for m in _NUMBER.finditer(head)]
    if not spans:
        return byte_run(rng, data)
    out = data
    for a, b in sorted(rng.sample(spans, min(len(spans), rng.choice((1, 1, 2, 3)))), reverse=True):
        out = out[:a] + rng.choice(_TEXT_VALUES) + out[b:]
    return out


def binary_int(rng: random.Random, data: bytes, dims=(12, 5000)) -> bytes:
    """Overwrite a 4- or 8-byte integer that equals one of ``dims`` (as a header stores a shape)
    with an extreme value; a random aligned offset in the first 4 KiB when none is found."""
    fmts = ("<I", ">I", "<Q", ">Q")
    head = data[:1 << 14]
    hits = [(head.find(struct.pack(f, d)), f) for d in dims for f in fmts if d < (1 << 32) or "Q" in f]
    hits = [(i, f) for i, f in hits if i >= 0]
    if hits:
        i, f = rng.choice(hits)
    else:
        f = rng.choice(fmts)
        i = 4 * rng.randrange(max(min(len(data), 4096) // 4 - 2, 1))
    value = rng.choice(_INTS) & ((1 << (8 * struct.calcsize(f))) - 1)
    raw = struct.pack(f, value)
    return data[:i] + raw + data[i + len(raw):]


def float_values(rng: random.Random, data: bytes) -> bytes:
    """Special floats written over samples (float32 and float64, both byte orders)."""
    if len(data) < 64:
        return flip_bits(rng, data)
    b = bytearray(data)
    for _ in range(rng.choice((1, 3, 50))):
        dtype = np.dtype(rng.choice(("<f4", "<f8", ">f4", ">f8")))
        with np.errstate(over="ignore"):  # 1e308 as float32 is inf: a value worth writing too
            raw = np.array([rng.choice(_FLOATS)]).astype(dtype).tobytes()
        i = len(raw) * rng.randrange(len(b) // len(raw) - 1)
        b[i:i + len(raw)] = raw
    return bytes(b)


def bad_sidecar(rng: random.Random, data: bytes) -> bytes:
    return rng.choice(_BAD_SIDECARS)


def bad_xml(rng: random.Random, data: bytes) -> bytes:
    """Insert a hostile construct after the prolog, drop a random tag, or cut inside a value."""
    r = rng.random()
    if r < 0.4:
        i = data.find(b">", data.find(b"<?xml")) + 1 if data.startswith(b"<?xml") else 0
        return data[:i] + rng.choice(_XML_EDITS) + data[i:]
    tags = [m.span() for m in re.finditer(rb"</?[A-Za-z][^<>]{0,200}>", data[:1 << 20])]
    if not tags:
        return truncate(rng, data)
    a, b = rng.choice(tags)
    if r < 0.7:
        return data[:a] + data[b:]
    if r < 0.85:  # duplicate an element's opening tag (a lead twice, a nested copy)
        return data[:a] + data[a:b] + data[a:]
    return data[:b + rng.randrange(1, 200)]


GENERIC = (flip_bits, byte_run, truncate, append, splice, binary_int, float_values)
TEXT = (text_number, text_number, flip_bits, byte_run, truncate, append, splice)
_TEXT_EXT = (".hea", ".json", ".xml")


def mutators_for(name: str):
    ext = Path(name).suffix.lower()
    if ext == ".json":
        return TEXT + (bad_sidecar, bad_sidecar)
    if ext == ".xml":
        return TEXT + (bad_xml, bad_xml, float_values)
    if ext == ".hea":
        return TEXT
    if ext == ".npy":
        return GENERIC + (text_number,)  # the .npy header is a Python dict written as text
    return GENERIC


def mutate_case(rng: random.Random, folder: Path, dims=(12, 5000)) -> list[str]:
    """Mutate the record files in ``folder`` in place; returns what was done (for reports)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if len(files) > 1 and rng.random() < 0.03:
            victim = files.pop(rng.randrange(len(files)))
            victim.unlink()
            done.append(f"delete {victim.name}")
            continue
        path = rng.choice(files)
        op = rng.choice(mutators_for(path.name))
        data = path.read_bytes()
        new = op(rng, data, dims) if op is binary_int else op(rng, data)
        path.write_bytes(new)
        done.append(f"{op.__name__} {path.name}")
    return done


def _position(rng: random.Random, n: int) -> int:
    """Mostly inside the first 4 KiB (headers), otherwise anywhere."""
    return rng.randrange(min(n, 4096)) if rng.random() < 0.6 else rng.randrange(n)


__all__ = ["mutate_case", "mutators_for"]
