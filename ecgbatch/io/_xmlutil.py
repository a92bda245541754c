"""Helpers shared by the XML ECG readers (GE MUSE, HL7 aECG): safe parsing, namespace-blind
element lookup, lead naming and the derived limb leads.

Safety: stdlib ElementTree never fetches external DTDs or external entities, but it does expand
entities declared in an internal DTD subset ("billion laughs"). ``parse_xml`` therefore refuses
any document whose prolog declares an internal subset or an entity, before the real parse. A bare
external DOCTYPE such as ``<!DOCTYPE RestingECG SYSTEM "restecg.dtd">`` (which every real GE MUSE
export carries) is allowed: it is never loaded, and an entity reference that it would have to
resolve makes the parse fail with a ``HeaderError``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator
from xml.parsers import expat

import numpy as np

from ecgbatch.io.errors import (EcgReadError, EmptyFileError, HeaderError, UnknownLeadError,
                                UnreadableError, UnsafeXmlError)
from ecgbatch.io import leads as _leads
from ecgbatch.io.record import STANDARD_LEADS, Record

LIMB_DERIVED = ("III", "aVR", "aVL", "aVF")
MAX_XML_BYTES = 1 << 30  # resting ECG exports are a few MB; bounds the memory one file may take


class _StopAtRoot(Exception):
    pass


def _check_prolog(data: bytes, path: str) -> None:
    """Parse only the prolog (up to the root start tag) with expat and refuse entity/DTD tricks."""
    parser = expat.ParserCreate()

    def on_doctype(name, system_id, public_id, has_internal_subset):
        if has_internal_subset:
            raise UnsafeXmlError(
                f"{path}: refusing XML with an internal DTD subset (<!DOCTYPE {name} [...]>); "
                "entity declarations can expand without bound", path)

    def on_entity(name, *_):
        raise UnsafeXmlError(f"{path}: refusing XML that declares entity {name!r}", path)

    def on_root(name, attrs):
        raise _StopAtRoot

    parser.StartDoctypeDeclHandler = on_doctype
    parser.EntityDeclHandler = on_entity
    parser.UnparsedEntityDeclHandler = on_entity
    parser.StartElementHandler = on_root
    try:
        parser.Parse(data, True)
    except _StopAtRoot:
        return
    except EcgReadError:
        raise
    except Exception as e:  # noqa: BLE001 - ExpatError; LookupError (unknown encoding), ValueError
        raise HeaderError(f"{path}: malformed XML: {type(e).__name__}: {e}", path) from None
    raise HeaderError(f"{path}: malformed XML: no root element", path)


def parse_xml(path: str | Path) -> ET.Element:
    """Read ``path`` and return its root element; typed errors for unreadable, empty, unsafe or
    malformed files."""
    p = str(path)
    try:
        if Path(path).stat().st_size > MAX_XML_BYTES:
            raise HeaderError(f"{p}: {Path(path).stat().st_size} bytes is more than the "
                              f"{MAX_XML_BYTES}-byte limit for an XML ECG", p)
        data = Path(path).read_bytes()
    except OSError as e:
        raise UnreadableError(f"{p}: cannot read file: {e.strerror or e}", p) from None
    if not data.strip():
        raise EmptyFileError(f"{p}: file is empty", p)
    _check_prolog(data, p)
    try:
        return ET.fromstring(data)
    except Exception as e:  # noqa: BLE001 - ParseError; LookupError, ValueError, RecursionError
        raise HeaderError(f"{p}: malformed XML: {type(e).__name__}: {e}", p) from None


# ---- namespace-blind navigation ------------------------------------------------------------

def local(tag: object) -> str:
    """'{urn:hl7-org:v3}sequence' -> 'sequence' (comments/PIs have non-str tags -> '')."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if local(c.tag) == name]


def child(el: ET.Element | None, name: str) -> ET.Element | None:
    if el is None:
        return None
    for c in el:
        if local(c.tag) == name:
            return c
    return None


def find(el: ET.Element | None, path: str) -> ET.Element | None:
    """First element along a '/'-separated path of local names."""
    for part in path.split("/"):
        el = child(el, part)
        if el is None:
            return None
    return el


def find_all(el: ET.Element, path: str) -> Iterator[ET.Element]:
    """Every element along a '/'-separated path of local names (all branches)."""
    parts = path.split("/")
    level = [el]
    for part in parts:
        level = [c for e in level for c in e if local(c.tag) == part]
    return iter(level)


def text(el: ET.Element | None, path: str | None = None) -> str | None:
    """Stripped text of ``el`` (or of ``el/path``); None when absent or blank."""
    if path is not None:
        el = find(el, path)
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


# ---- leads ---------------------------------------------------------------------------------

def canonical_lead(name: str) -> str | None:
    """The canonical standard name ('AVR' -> 'aVR', through ecgbatch.io.leads, the one lead-name
    table of the package); None when the name is not one of the standard 12."""
    c = _leads.canonical_lead(name)
    return c if _leads.is_standard(c) else None


def derive_limb_leads(leads: dict[str, np.ndarray]) -> list[str]:
    """Add III, aVR, aVL, aVF computed from I and II (Einthoven / Goldberger) where absent.

    Returns the names that were derived (empty when I or II is missing or nothing was absent).
    """
    if "I" not in leads or "II" not in leads:
        return []
    i, ii = leads["I"], leads["II"]
    formulas = {
        "III": lambda: ii - i,
        "aVR": lambda: -(i + ii) / 2.0,
        "aVL": lambda: i - ii / 2.0,
        "aVF": lambda: ii - i / 2.0,
    }
    derived = []
    for name in LIMB_DERIVED:
        if name not in leads:
            leads[name] = formulas[name]()
            derived.append(name)
    return derived


def stack_leads(leads: dict[str, np.ndarray], path: str) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """Order leads canonically (standard 12 first, then others in file order) and stack them.

    Returns (signal float32 [leads, samples], names, non-standard names). Raises UnknownLeadError
    when none of the leads is a standard one, LengthMismatchError is the caller's job.
    """
    standard = [n for n in STANDARD_LEADS if n in leads]
    others = [n for n in leads if n not in STANDARD_LEADS]
    if not standard:
        raise UnknownLeadError(f"{path}: no standard ECG lead among {list(leads)!r}", path)
    names = tuple(standard + others)
    signal = np.stack([np.asarray(leads[n], dtype=np.float32) for n in names])
    return signal, names, others


def xml_record(signal: np.ndarray, names: tuple[str, ...], others: list[str], derived: list[str],
               fs: float, path: str, meta: dict) -> Record:
    """The Record both XML readers return (mV), noting derived and non-standard leads in meta."""
    if derived:
        meta["derived_leads"] = derived
    if others:
        meta["nonstandard_leads"] = others
    return Record(signal=signal, fs=fs, leads=names, units="mV", record_id=Path(path).stem,
                  source=path, meta=meta)
