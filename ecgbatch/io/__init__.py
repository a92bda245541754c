"""ECG ingestion: every supported format -> one ``Record``; archive scans -> parquet manifests.

Imports only NumPy at import time (h5py, pyarrow and the XML readers load on first use), so
``import ecgbatch.io`` works without torch, ray or faiss.

    rec = read_record("ludb/1.hea")                  # WFDB, Challenge .hea+.mat, CPSC .mat, .npy/.npz,
    rec = read_record("code15.h5#3")                 # HDF5, GE MUSE XML, HL7 aECG XML
    hdr = read_header("ludb/1.hea")                  # metadata only, no signal decoding
    for src in list_records("archive/"): ...         # cheap RecordSource per record (for Ray)
    for item in scan("archive/"): ...                # Record | RecordHeader | Failure, streaming
    write_manifest(scan("archive/", headers_only=True), "manifest.parquet", "failures.parquet")
"""
from ecgbatch.io.api import read_header, read_record, scrub_identifiers
from ecgbatch.io.detect import FORMATS, detect_format
from ecgbatch.io.entries import Failure, RecordSource
from ecgbatch.io.errors import EcgReadError
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.leads import canonical_lead, canonical_leads
from ecgbatch.io.record import STANDARD_LEADS, Record
from ecgbatch.io.scanner import Scan, ScanStats, list_records, scan

__all__ = [
    "Record", "RecordHeader", "RecordSource", "Failure", "EcgReadError", "STANDARD_LEADS", "FORMATS",
    "read_record", "read_header", "detect_format", "canonical_lead", "canonical_leads",
    "scrub_identifiers", "list_records", "scan", "Scan", "ScanStats", "write_manifest",
]


def __getattr__(name):  # pyarrow loads only when a manifest is written
    if name == "write_manifest":
        from ecgbatch.io.manifest import write_manifest

        return write_manifest
    raise AttributeError(f"module 'ecgbatch.io' has no attribute {name!r}")
