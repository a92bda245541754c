"""Lead names: one canonical spelling for the twelve standard leads, everything else kept as given.

Archives spell leads many ways: ``i``/``avr`` (LUDB), ``AVR`` (PTB-XL), ``DI``/``DII``/``DIII``
(Brazilian CODE exports, Einthoven's Roman-numeral "derivations"), ``Lead II``, ``ECG V1``. All of
these map to the names in ``STANDARD_LEADS``. Names that are not one of the twelve (``MLII``,
``V4R``, Frank ``X``/``Y``/``Z``, ``-aVR``, ``CH1``) are kept verbatim: ``MLII`` (modified lead II
of Holter recordings) is deliberately *not* mapped to ``II``, because the electrode placement
differs and a model trained on standard leads should not be told otherwise.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from ecgbatch.io.record import STANDARD_LEADS

# upper-cased key -> canonical name
_ALIASES: dict[str, str] = {name.upper(): name for name in STANDARD_LEADS}
_ALIASES.update({"DI": "I", "DII": "II", "DIII": "III", "D1": "I", "D2": "II", "D3": "III"})

_PREFIX = re.compile(r"^(?:LEAD|ECG|EKG)[\s_\-:]*", re.IGNORECASE)


@lru_cache(maxsize=4096)
def canonical_lead(name: str) -> str:
    """Canonical spelling of one lead name (``'avr'`` -> ``'aVR'``); unknown names come back stripped
    but otherwise unchanged."""
    if not isinstance(name, str):
        raise ValueError(f"lead name must be a string, got {name!r}")
    raw = name.strip()
    key = _PREFIX.sub("", raw).replace(" ", "").replace("_", "").upper()
    return _ALIASES.get(key, raw)


def canonical_leads(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(canonical_lead(n) for n in names)


def is_standard(name: str) -> bool:
    return name in _STANDARD_SET


def unknown_leads(names: Iterable[str]) -> list[str]:
    """Names (already canonical) that are neither standard nor a recognised extra lead (right-sided
    and posterior chest leads, Frank X/Y/Z, Holter modified limb leads)."""
    return [n for n in names if n not in _STANDARD_SET and n.upper() not in _EXTRA_KEYS]


_STANDARD_SET = frozenset(STANDARD_LEADS)
_EXTRA_KEYS = frozenset(
    [f"V{i}R" for i in range(1, 7)] + ["V7", "V8", "V9", "X", "Y", "Z", "VX", "VY", "VZ",
                                       "MLI", "MLII", "MLIII", "-AVR"])
