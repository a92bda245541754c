"""Vectorised decoders for WFDB signal-file formats: bytes -> digital samples (int32), no per-sample
Python. Every function takes the raw bytes of one signal file (after its byte offset) and the number
of samples to return (frames x samples-per-frame, interleaved as stored).

Formats (https://physionet.org/physiotools/wag/signal-5.htm): 8 (8-bit first differences),
16 / 61 (16-bit little / big endian), 80 / 160 (8 / 16-bit offset binary), 212 (two 12-bit samples
in 3 bytes), 310 / 311 (three 10-bit samples in 4 bytes), 24 / 32 (24 / 32-bit little endian).
FLAC formats (508, 516, 524) are refused with UnknownFormatError.
"""
from __future__ import annotations

import numpy as np

# bits per stored sample; the "invalid sample" code (read as NaN) as in the WFDB library
BITS = {8: 8, 16: 16, 61: 16, 80: 8, 160: 16, 212: 12, 310: 10, 311: 10, 24: 24, 32: 32}
INVALID = {16: -(1 << 15), 61: -(1 << 15), 160: -(1 << 15), 80: -(1 << 7), 212: -(1 << 11),
           310: -(1 << 9), 311: -(1 << 9), 24: -(1 << 23), 32: -(1 << 31)}
SUPPORTED = frozenset(BITS)
OFFSET = {80: 128, 160: 32768}  # offset-binary formats: stored value - offset = digital value
# plain-dtype formats readable straight from the file with np.fromfile
ALIGNED_DTYPE = {16: "<i2", 61: ">i2", 32: "<i4", 80: "u1", 160: "<u2", 8: "i1"}


def n_bytes(fmt: int, n_samples: int) -> int:
    """Bytes that n_samples samples of format fmt occupy (rounded up to whole samples)."""
    if fmt == 212:
        return (3 * n_samples + 1) // 2
    if fmt in (310, 311):  # a trailing partial group stores 1 or 2 samples in 2 or 3/4 bytes
        return 4 * (n_samples // 3) + {0: 0, 1: 2, 2: 4 if fmt == 310 else 3}[n_samples % 3]
    return n_samples * (BITS[fmt] // 8)


def samples_in(fmt: int, n_bytes_: int) -> int:
    """Whole samples that n_bytes_ bytes of format fmt hold."""
    if fmt == 212:
        return (2 * n_bytes_) // 3
    if fmt in (310, 311):
        return 3 * (n_bytes_ // 4) + {0: 0, 1: 0, 2: 1, 3: 1 if fmt == 310 else 2}[n_bytes_ % 4]
    return n_bytes_ // (BITS[fmt] // 8)


def decode(raw: np.ndarray, fmt: int, n: int) -> np.ndarray:
    """Decode n samples of format fmt from raw (uint8 or, for aligned formats, the typed array).
    Returns integer digital values (format 8 returns first differences; see ``undiff``)."""
    if fmt in ALIGNED_DTYPE:  # returned in the stored integer type (no copy for 16/61/32/8)
        a = raw if raw.dtype == np.dtype(ALIGNED_DTYPE[fmt]) else raw.view(ALIGNED_DTYPE[fmt])
        a = a[:n]
        return a  # 80 / 160 stay offset binary: subtract OFFSET[fmt] when converting
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
        else:  # 311: bits 0-9, 10-19, 20-29 of one LE 32-bit word
            out[:, 0] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
            out[:, 1] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
            out[:, 2] = (b[:, 2] >> 4) | ((b[:, 3] & 0x3F) << 4)
        return ((out.ravel()[:n] ^ 0x200) - 0x200).astype(np.int32)
    raise ValueError(f"unsupported WFDB format {fmt!r}")


def undiff(frames: np.ndarray, init_values: np.ndarray) -> np.ndarray:
    """Format 8: first differences [frames, signals] -> absolute samples (cumsum + initial value)."""
    return np.cumsum(frames, axis=0, dtype=np.int32) + init_values[None, :]


def _padded(b: np.ndarray, size: int) -> np.ndarray:
    if b.size >= size:
        return b[:size]
    out = np.zeros(size, np.uint8)
    out[: b.size] = b
    return out
