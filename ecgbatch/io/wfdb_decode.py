"""Vectorised decoders for WFDB signal-file formats: bytes -> digital samples, no per-sample Python.
Every function works on one signal file (after its byte offset) and a number of samples (frames x
samples per frame, interleaved as stored).

Formats (https://physionet.org/physiotools/wag/signal-5.htm): 8 (8-bit first differences),
16 / 61 (16-bit little / big endian), 80 / 160 (8 / 16-bit offset binary), 212 (two 12-bit samples
in 3 bytes), 310 / 311 (three 10-bit samples in 4 bytes), 24 / 32 (24 / 32-bit little endian), and
the FLAC formats 508 / 516 / 524 (read with ``soundfile``, which ``wfdb`` itself depends on).

Bit for bit what ``wfdb.rdsamp`` (wfdb-python 4.x) returns, including one liberty it takes with
format 311: the third sample of a group is read from bits 20-30 of the 32-bit word (bit 30 included,
then folded into the 10-bit range), where the WFDB C library ignores bits 30-31. The WFDB writers
leave those bits zero, so both libraries agree on every file they write.
"""
from __future__ import annotations

import numpy as np

# bits per stored sample; the "invalid sample" code (read as NaN) as in the WFDB library
BITS = {8: 8, 16: 16, 61: 16, 80: 8, 160: 16, 212: 12, 310: 10, 311: 10, 24: 24, 32: 32}
FLAC_BITS = {508: 8, 516: 16, 524: 24}
INVALID = {16: -(1 << 15), 61: -(1 << 15), 160: -(1 << 15), 80: -(1 << 7), 212: -(1 << 11),
           310: -(1 << 9), 311: -(1 << 9), 24: -(1 << 23), 32: -(1 << 31),
           508: -(1 << 7), 516: -(1 << 15), 524: -(1 << 23)}
SUPPORTED = frozenset(BITS) | frozenset(FLAC_BITS)
OFFSET = {80: 128, 160: 32768}  # offset-binary formats: stored value - offset = digital value
# plain-dtype formats readable straight from the file with np.fromfile
ALIGNED_DTYPE = {16: "<i2", 61: ">i2", 32: "<i4", 80: "u1", 160: "<u2", 8: "i1"}
_GROUP = {212: (2, 3), 310: (3, 4), 311: (3, 4)}  # bit-packed formats: (samples, bytes) per group


def n_bytes(fmt: int, n_samples: int) -> int:
    """Bytes that n_samples samples of format fmt occupy (a trailing partial group rounded up to
    the bytes that hold its samples; format 310 stores a trailing pair in a whole group)."""
    if fmt == 212:
        return (3 * n_samples + 1) // 2
    if fmt in (310, 311):
        return 4 * (n_samples // 3) + {0: 0, 1: 2, 2: 4 if fmt == 310 else 3}[n_samples % 3]
    return n_samples * (BITS[fmt] // 8)


def samples_in(fmt: int, n_bytes_: int) -> int:
    """Whole samples that n_bytes_ bytes of format fmt hold."""
    if fmt == 212:
        return (2 * n_bytes_) // 3
    if fmt in (310, 311):
        return 3 * (n_bytes_ // 4) + {0: 0, 1: 0, 2: 1, 3: 1 if fmt == 310 else 2}[n_bytes_ % 4]
    return n_bytes_ // (BITS[fmt] // 8)


def padded_bytes(fmt: int, n_samples: int) -> int:
    """Bytes of n_samples rounded up to a whole group: what a writer may legitimately store (the
    unused slots of the last group are padding, not extra samples)."""
    if fmt in _GROUP:
        per, size = _GROUP[fmt]
        return -(-n_samples // per) * size
    return n_bytes(fmt, n_samples)


def decode(raw: np.ndarray, fmt: int, n: int) -> np.ndarray:
    """Decode n samples of format fmt from raw (uint8 or, for aligned formats, the typed array).
    Returns integer digital values (format 8 returns first differences; see ``undiff``; 80 / 160
    stay offset binary: subtract OFFSET[fmt])."""
    if fmt in ALIGNED_DTYPE:  # returned in the stored integer type (no copy for 16/61/32/8)
        a = raw if raw.dtype == np.dtype(ALIGNED_DTYPE[fmt]) else raw.view(ALIGNED_DTYPE[fmt])
        return a[:n]
    b = raw.view(np.uint8)
    if fmt == 24:  # copy the 3 bytes into little-endian int32 slots, sign-extend the top byte
        b = b[: 3 * n].reshape(-1, 3)
        out = np.empty(b.shape[0], "<i4")
        ob = out.view(np.uint8).reshape(-1, 4)
        ob[:, :3] = b
        ob[:, 3] = (b[:, 2] >> 7) * np.uint8(0xFF)
        return out
    if fmt == 212:
        groups = -(-n // 2)
        b = _padded(b, 3 * groups).reshape(-1, 3).astype(np.int32)
        out = np.empty((groups, 2), np.int32)
        out[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        out[:, 1] = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
        return ((out.ravel()[:n] ^ 0x800) - 0x800).astype(np.int32)
    if fmt in (310, 311):
        groups = -(-n // 3)
        b = _padded(b, 4 * groups).reshape(-1, 4).astype(np.int32)
        out = np.empty((groups, 3), np.int32)
        if fmt == 310:  # 10-bit samples in bits 1-10 of two LE 16-bit words; third from bits 11-15
            out[:, 0] = (b[:, 0] >> 1) | ((b[:, 1] & 0x07) << 7)
            out[:, 1] = (b[:, 2] >> 1) | ((b[:, 3] & 0x07) << 7)
            out[:, 2] = ((b[:, 1] >> 3) & 0x1F) | (((b[:, 3] >> 3) & 0x1F) << 5)
        else:  # 311: bits 0-9, 10-19, 20-29 (and 30, as wfdb-python reads it) of one LE 32-bit word
            out[:, 0] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
            out[:, 1] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
            out[:, 2] = (b[:, 2] >> 4) | ((b[:, 3] & 0x7F) << 4)
        v = out.ravel()[:n]
        return np.where(v > 511, v - 1024, v).astype(np.int32)  # two's complement from bit 9
    raise ValueError(f"unsupported WFDB format {fmt!r}")


def undiff(frames: np.ndarray, init_values: np.ndarray, spf: list[int]) -> np.ndarray:
    """Format 8: first differences [frames, samples per frame] -> absolute samples. Each signal's
    differences run through its samples in time order (all of a frame's samples, then the next
    frame's), starting from the header's initial value."""
    if all(s == 1 for s in spf):
        return np.cumsum(frames, axis=0, dtype=np.int32) + init_values[None, :]
    out = np.empty(frames.shape, np.int32)
    start = 0
    for s, init in zip(spf, init_values):
        cols = slice(start, start + s)
        out[:, cols] = (np.cumsum(frames[:, cols].ravel(), dtype=np.int32) + init).reshape(-1, s)
        start += s
    return out


def read_flac(path: str, fmt: int, n_signals: int, spf: int, n_frames: int,
              sample_offset: int = 0) -> np.ndarray:
    """FLAC formats 508 / 516 / 524: [n_frames, n_signals * spf] digital samples in WFDB frame order
    (each signal's spf samples together), as ``wfdb`` writes them (one FLAC channel per signal,
    ``spf`` FLAC samples per WFDB frame). Raises ValueError for a file that does not match."""
    import soundfile

    with open(path, "rb") as fh:
        if fh.read(4) != b"fLaC":
            raise ValueError("not a FLAC file")
    with soundfile.SoundFile(path) as sf:
        bits = {"PCM_S8": 8, "PCM_16": 16, "PCM_24": 24}.get(sf.subtype)
        if bits is None or bits > FLAC_BITS[fmt]:
            raise ValueError(f"FLAC subtype {sf.subtype} does not fit format {fmt}")
        if sf.channels != n_signals:
            raise ValueError(f"FLAC file has {sf.channels} channels, the header {n_signals}")
        sf.seek(sample_offset)
        data = sf.read(n_frames * spf, dtype="int16" if bits <= 16 else "int32", always_2d=True)
    if data.shape[0] < n_frames * spf:
        raise ValueError(f"FLAC file holds {data.shape[0]} samples per channel, "
                         f"the header needs {n_frames * spf}")
    if bits in (8, 24):  # soundfile returns them left-justified in int16 / int32
        data = data >> 8
    return np.ascontiguousarray(
        data.reshape(n_frames, spf, n_signals).transpose(0, 2, 1)).reshape(n_frames, -1)


def flac_frames(path: str) -> int:
    """Samples per channel in a FLAC file (its STREAMINFO), without decoding."""
    import soundfile

    return int(soundfile.info(path).frames)


def _padded(b: np.ndarray, size: int) -> np.ndarray:
    if b.size >= size:
        return b[:size]
    out = np.zeros(size, np.uint8)
    out[: b.size] = b
    return out
