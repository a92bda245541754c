"""ECG input for the model: a Record (any reader's output) or an array -> [leads, samples] float32
exactly as the tower's PreprocessConfig asks (ecgbatch.signal.preprocess: leads by name,
units, NaN policy, resampling, crop/pad). No torch."""
from __future__ import annotations

import numpy as np

from ecgbatch.io.api import read_record
from ecgbatch.io.errors import EcgReadError
from ecgbatch.io.record import Record
from ecgbatch.llava.errors import EcgInputError
from ecgbatch.llava.grounding import measure_for_grounds
from ecgbatch.signal.config import PreprocessConfig
from ecgbatch.signal.content import require_physiological
from ecgbatch.signal.preprocess import preprocess


def _preprocess_config(config) -> PreprocessConfig:
    if isinstance(config, PreprocessConfig):
        return config
    pre = getattr(config, "preprocess_config", None)
    if isinstance(pre, PreprocessConfig):
        return pre
    if isinstance(config, dict) and "preprocess" in config:
        return PreprocessConfig.from_dict(config["preprocess"])
    raise TypeError(f"config must be an EcgLlavaConfig, a PreprocessConfig or a config dict, got "
                    f"{type(config).__name__}")


def preprocess_for_model(record_or_array, config, record_id: str | None = None) -> np.ndarray:
    """One ECG -> the model's input [len(leads), n_samples] float32.

    A Record is mapped by lead NAME (any order, any spelling canonical_lead knows), converted to
    the model's units and resampled to its rate. A bare array carries no names or rate: it must
    already be [len(leads), n] in the model's lead order at the model's rate (it is then only
    cropped/padded as the config says). Errors name the record: MissingLeadError /
    BadSignalError (typed EcgReadError) from preprocessing, EcgInputError for arrays."""
    pre = _preprocess_config(config)
    if isinstance(record_or_array, Record) or hasattr(record_or_array, "signal"):
        rec = record_or_array
        rid = record_id or getattr(rec, "record_id", "") or "<unnamed record>"
    else:
        rid = record_id or "<array>"
        arr = np.asarray(record_or_array)
        if arr.ndim != 2 or arr.shape[0] != len(pre.leads):
            raise EcgInputError(f"ECG {rid!r}: an array must be [{len(pre.leads)} leads ({', '.join(pre.leads)}), "
                                f"samples] at {pre.fs:g} Hz, got shape {arr.shape}; pass a Record to map "
                                "leads by name and resample")
        if not np.issubdtype(arr.dtype, np.number):
            raise EcgInputError(f"ECG {rid!r}: array dtype {arr.dtype} is not numeric")
        rec = Record(signal=arr, fs=pre.fs, leads=tuple(pre.leads), units=pre.units, record_id=rid)
    try:
        out = preprocess(rec, pre)
    except EcgReadError:
        raise                      # typed, and the message already names the record
    except ValueError as exc:      # e.g. a rate the resampler cannot reach
        raise EcgInputError(f"ECG {rid!r} cannot be brought to the model input ({pre.fs:g} Hz, "
                            f"{pre.n_samples} samples): {exc}") from None
    return np.ascontiguousarray(out.x, dtype=np.float32)


def read_for_model(records: list[str], config, measurements: list | None = None
                   ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
    """([(record, the model's input)] for the readable records, [(record, "kind: message")] for
    the others), in order: what `report`, `chat` and the server's paths read. ``measurements``:
    a list that gets each readable record's grounding measurements (ecgbatch.llava.grounding.
    measure_for_grounds, from the record as read, not the model's filtered input), in order."""
    ok, failed = [], []
    for path in records:
        try:
            rec = read_record(path)
            require_physiological(rec)      # no confident report on a flat or absurd signal
            ok.append((path, preprocess_for_model(rec, config, record_id=path)))
            if measurements is not None:
                measurements.append(measure_for_grounds(rec))
        except (EcgReadError, ValueError) as exc:   # EcgInputError is a ValueError
            failed.append((path, f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}"))
    return ok, failed
