"""ECG-Chat's ECG-Instruct format (ecg-chat-reference.md 6.4): read, check, write.

An item is ``{"id": str, "ecg": path, "conversations": [{"from": "human", "value": "<ecg>\\n..."},
{"from": "gpt", "value": "..."}, ...]}``: turns alternate human/gpt starting with human, ``<ecg>``
appears exactly once, in the first human turn (at its start or end). ``ecg`` is a record path
relative to an archive root (ECG-Chat: the MIMIC-IV-ECG root, WFDB names without extension), or
absolute; it is read by ``ecgbatch.io.read_record``, so any format works. Extra keys (our
``meta`` provenance) are kept and ignored by ECG-Chat's loader.

Files: a JSON list (ECG-Chat's ``*.json``) or JSON Lines (``*.jsonl``, one item per line).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ecgbatch.io import read_record

ECG_TOKEN = "<ecg>"
ROLES = ("human", "gpt")


class InstructDataError(ValueError):
    """An ECG-Instruct item that cannot be used; ``kind`` says what is wrong, the message names
    the file, the item's position and its id."""

    def __init__(self, message: str, kind: str, item_id: str | None = None, index: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.item_id = item_id
        self.index = index


@dataclass
class InstructItem:
    id: str
    ecg: str                       # as written in the file
    ecg_path: Path                 # resolved against the archive root
    conversations: list[dict]
    meta: dict = field(default_factory=dict)

    def read_ecg(self, **read_options):
        """The item's ECG as an ``ecgbatch.io.Record``."""

        return read_record(self.ecg_path, **read_options)

    def to_dict(self) -> dict:
        d = {"id": self.id, "ecg": self.ecg, "conversations": self.conversations}
        if self.meta:
            d["meta"] = self.meta
        return d


def _record_exists(p: Path) -> bool:
    """A file, or a record name without extension (WFDB ``x`` for ``x.hea``)."""
    if p.is_file():
        return True
    parent = p.parent
    return parent.is_dir() and any(parent.glob(p.name + ".*"))


def resolve_ecg(ecg: str, root: str | Path | None) -> Path:
    p = Path(ecg).expanduser()
    if p.is_absolute() or root is None:
        return p
    return Path(root).expanduser() / p


def check_conversations(conv, where: str, item_id: str | None = None, index: int | None = None) -> None:
    """Raise InstructDataError unless ``conv`` is a valid ECG-Instruct conversation."""
    def bad(msg, kind):
        raise InstructDataError(f"{where}: {msg}", kind, item_id, index)

    if not isinstance(conv, list) or len(conv) < 2:
        bad(f"'conversations' must be a list of at least 2 turns, got {conv!r:.80}", "bad_turns")
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or set(turn) < {"from", "value"} or not isinstance(turn.get("value"), str):
            bad(f"turn {j} must be an object with 'from' and a string 'value', got {turn!r:.80}", "bad_turns")
        if turn["from"] != ROLES[j % 2]:
            bad(f"turn {j} is from {turn['from']!r}; turns must alternate human/gpt starting with human",
                "bad_turns")
        if not turn["value"].strip():
            bad(f"turn {j} is empty", "bad_turns")
    if len(conv) % 2:
        bad("the last turn is a human turn with no answer", "bad_turns")
    first = conv[0]["value"]
    if first.count(ECG_TOKEN) != 1:
        bad(f"the first human turn must hold {ECG_TOKEN!r} exactly once, found {first.count(ECG_TOKEN)}",
            "no_ecg_token")
    later = [j for j, t in enumerate(conv[1:], 1) if ECG_TOKEN in t["value"]]
    if later:
        bad(f"{ECG_TOKEN!r} appears again in turn {later[0]}; ECG-Instruct has one ECG per item", "no_ecg_token")


def parse_item(d, root, where: str, index: int, check_files: bool = True) -> InstructItem:
    item_id = str(d.get("id")) if isinstance(d, dict) and d.get("id") is not None else None
    here = f"{where} item {index}" + (f" (id {item_id})" if item_id else "")
    if not isinstance(d, dict):
        raise InstructDataError(f"{here}: an item must be a JSON object, got {type(d).__name__}",
                                "bad_item", None, index)
    missing = [k for k in ("id", "ecg", "conversations") if k not in d]
    if missing:
        raise InstructDataError(f"{here}: missing key(s) {missing}", "bad_item", item_id, index)
    if not isinstance(d["ecg"], str) or not d["ecg"].strip():
        raise InstructDataError(f"{here}: 'ecg' must be a record path, got {d['ecg']!r}", "missing_ecg",
                                item_id, index)
    check_conversations(d["conversations"], here, item_id, index)
    path = resolve_ecg(d["ecg"], root)
    if check_files and not _record_exists(path):
        raise InstructDataError(f"{here}: ECG {d['ecg']!r} not found (looked for {str(path)!r})",
                                "missing_ecg", item_id, index)
    return InstructItem(item_id, d["ecg"], path, d["conversations"], dict(d.get("meta") or {}))


def _raw_items(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InstructDataError(f"{path}: line {i} is not JSON: {exc}", "bad_json") from exc
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstructDataError(f"{path}: not JSON: {exc}", "bad_json") from exc
    if not isinstance(data, list):
        raise InstructDataError(f"{path}: ECG-Instruct JSON must be a list of items, got "
                                f"{type(data).__name__}", "bad_json")
    return data


def read_instruct(path: str | Path, ecg_root: str | Path | None = None, check_files: bool = True,
                  on_error: str = "raise", split: str | None = None):
    """Items of an ECG-Instruct file, ``ecg`` paths resolved against ``ecg_root``.

    on_error="raise" stops at the first bad item; "collect" returns ``(items, errors)`` with
    every InstructDataError. ``split`` keeps items whose ``meta.split`` is that value."""
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ECG-Instruct file not found: {str(p)!r}")
    items, errors = [], []
    for i, d in enumerate(_raw_items(p)):
        try:
            it = parse_item(d, ecg_root, str(p), i, check_files)
        except InstructDataError as exc:
            if on_error == "raise":
                raise
            errors.append(exc)
            continue
        if split is None or it.meta.get("split") == split:
            items.append(it)
    return (items, errors) if on_error == "collect" else items


def write_jsonl(items, path: str | Path) -> Path:
    """Write item dicts as JSON Lines, atomically (temp file in the same folder, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for it in items:
                fh.write(json.dumps(it.to_dict() if isinstance(it, InstructItem) else it,
                                    ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
