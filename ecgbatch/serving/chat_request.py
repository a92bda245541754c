"""OpenAI chat requests with an ECG, checked and turned into what the engine takes (no vLLM here).

The ECG content part (ecgbatch's own type; one per conversation, in a user message):

    {"type": "ecg", "ecg": {"data": "<base64 of little-endian float32, lead-major [leads, samples]>",
                            "fs": 500, "leads": ["I", "II", ...], "units": "mV"}}
    {"type": "ecg", "ecg": {"path": "cinc2021/A0689.hea"}}       # relative to the server's --ecg-dir

Inline samples may come at any rate and in any lead order or spelling ecgbatch maps
(``canonical_lead``): they go through the model's own preprocessing (lead mapping by name,
units, resampling, crop/pad: ``ecgbatch.llava.preprocess_for_model``), exactly like a record read
from a file. Paths are resolved under ``--ecg-dir`` only (symlinks followed, then checked; a path
without its extension is completed first and then checked the same way), and every file the
record names must lie in the record's own folder (``ecgbatch.io.confine``), so a remote caller
cannot make the server read other files. Error messages name files relative to --ecg-dir only
(``public_message``); a record's decoded size is bounded before decoding
(``Limits.max_decoded_bytes``), and a signal without physiological content is refused (422).

The conversation becomes (question, history) for ``ecgbatch.llava.prompting.prompt_ids``: user /
assistant turns alternating, ending with a user turn; the ECG is the conversation's and goes into
the first user turn (ECG-Chat's "<ecg>\\n" + question), so the server, ``ecgbatch chat`` and
``ecgbatch report`` build identical token ids for the same question.

Every problem raises ``RequestError`` with an HTTP status (4xx) and a message for the caller.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgbatch.io import read_record
from ecgbatch.io.errors import EcgReadError
from ecgbatch.io.leads import canonical_lead
from ecgbatch.io.record import Record
from ecgbatch.llava.grounding import measure_for_grounds
from ecgbatch.llava.inputs import preprocess_for_model
from ecgbatch.signal.content import NO_CONTENT, physiological_flags

MAX_PATH_CHARS = 1024       # ecg.path; each component at most NAME_MAX (255) as on Linux
MAX_NAME_CHARS = 255
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\"/:]+/)+(?=[^\s'\"/:]*)")


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, ``code`` a short machine word."""

    kind = "bad_request"

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024      # whole HTTP body
    max_ecgs_per_request: int = 1               # the model takes one ECG per prompt
    max_leads: int = 16
    max_samples: int = 120_000                  # per lead, before resampling (e.g. 2 min at 1 kHz)
    max_tokens: int = 1024                      # most new tokens a request may ask for
    max_messages: int = 64
    max_text_chars: int = 32_000                # all message texts together
    body_timeout_s: float = 30.0                # a request body must arrive within this (408)
    # decoded bytes one request may inflate its ECG to (the reader's per-record budget, checked
    # against what the file declares before decoding): the largest record the limits let through,
    # max_leads x max_samples, as float64 (the widest type a reader decodes to) = 15 MB by default
    max_decoded_bytes: int | None = None

    def __post_init__(self):
        if self.max_decoded_bytes is None:
            self.max_decoded_bytes = self.max_leads * self.max_samples * 8


@dataclass
class SamplingRequest:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float | None = None     # None: the model's decoding default


@dataclass
class ChatJob:
    """A checked request: the model name, the conversation, the ECG part and the sampling."""

    model: str
    question: str
    history: list[tuple[str, str]]
    ecg_part: dict
    sampling: SamplingRequest
    stream: bool = False
    include_usage: bool = False
    grounding: object = None     # the ECG's ecgbatch.llava.grounding.Grounding, set by the server


# -- the conversation ---------------------------------------------------------------------------
def _fail(msg: str, status: int = 400, code: str = "invalid_request"):
    raise RequestError(msg, status, code)


def _parts(content, i: int) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    _fail(f"messages[{i}].content must be a string or a list of content parts")


def _message_text_and_ecgs(msg, i: int, ecg_token: str) -> tuple[str, list[dict]]:
    texts, ecgs = [], []
    for j, part in enumerate(_parts(msg.get("content"), i)):
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                _fail(f"messages[{i}].content[{j}]: a text part needs a string 'text'")
            if not is_utf8(part["text"]):
                _fail(f"messages[{i}].content[{j}]: the text is not valid Unicode (lone surrogate)")
            texts.append(part["text"])
        elif kind == "ecg":
            if msg.get("role") != "user":
                _fail(f"messages[{i}]: an ECG part belongs in a user message")
            ecgs.append(part.get("ecg"))
        else:
            _fail(f"messages[{i}].content[{j}]: unsupported content part type {kind!r} "
                  "(this server takes 'text' and 'ecg' parts)")
    text = "\n".join(texts).strip()
    if ecg_token in text:
        _fail(f"messages[{i}]: the text holds the reserved placeholder {ecg_token!r}; send the ECG as an "
              "'ecg' content part instead")
    return text, ecgs


def parse_conversation(messages, ecg_token: str, limits: Limits) -> tuple[str, list[tuple[str, str]], dict]:
    """(question, [(user, assistant), ...] history, the ECG part) from OpenAI ``messages``."""
    if not isinstance(messages, list) or not messages:
        _fail("'messages' must be a non-empty list")
    if len(messages) > limits.max_messages:
        _fail(f"too many messages ({len(messages)} > {limits.max_messages})", 413, "too_large")
    turns, ecgs, n_chars = [], [], 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            _fail(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role not in ("user", "assistant"):
            _fail(f"messages[{i}]: role {role!r} is not supported (user and assistant turns only; the "
                  "model's prompt format fixes its system prompt)")
        text, found = _message_text_and_ecgs(msg, i, ecg_token)
        n_chars += len(text)
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            _fail(f"messages[{i}]: expected a {expected} turn (turns alternate, starting with the user)")
        turns.append(text)
        ecgs.extend(found)
    if n_chars > limits.max_text_chars:
        _fail(f"the messages hold {n_chars} characters, more than the limit of {limits.max_text_chars}",
              413, "too_large")
    if len(turns) % 2 == 0:
        _fail("the last message must be a user turn")
    if len(ecgs) > limits.max_ecgs_per_request:
        _fail(f"{len(ecgs)} ECG parts in one conversation; this model takes "
              f"{limits.max_ecgs_per_request} ECG per conversation")
    if not ecgs:
        _fail("the conversation holds no ECG: put one {\"type\": \"ecg\", ...} part in a user message")
    if not turns[-1]:
        _fail("the last user message has no text (the question)")
    history = [(turns[k], turns[k + 1]) for k in range(0, len(turns) - 1, 2)]
    return turns[-1], history, ecgs[0]


def is_utf8(text: str) -> bool:
    """False for a str that cannot be sent on as UTF-8 (lone surrogates from JSON \\ud800 escapes)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _number(body: dict, key: str, default, kind, lo, hi):
    v = body.get(key, default)
    if v is None:
        return default
    whole = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not whole):
        _fail(f"'{key}' must be a{'n integer' if kind is int else ' number'}, got {_short(v)}")
    if not lo <= v <= hi:      # int/float comparisons are exact for any size: no float(v) overflow
        _fail(f"'{key}' must be between {lo} and {hi}, got {_short(v)}")
    return kind(v)


def _short(v) -> str:
    text = repr(v) if not isinstance(v, int) or abs(v) < 10 ** 30 else f"an integer of {len(str(abs(v)))} digits"
    return text[:40]


def parse_sampling(body: dict, limits: Limits, default_max_tokens: int) -> SamplingRequest:
    if body.get("n", 1) != 1:
        _fail("'n' must be 1 (one answer per request)")
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": mt}, "max_tokens", min(default_max_tokens, limits.max_tokens),
                         int, 1, limits.max_tokens)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        _fail("'stop' must be a string or a list of at most 4 non-empty strings")
    return SamplingRequest(max_tokens=max_tokens,
                           temperature=_number(body, "temperature", 0.0, float, 0.0, 2.0),
                           top_p=_number(body, "top_p", 1.0, float, 1e-6, 1.0),
                           seed=_number(body, "seed", None, int, 0, 2**63 - 1), stop=stop,
                           repetition_penalty=_number(body, "repetition_penalty", None, float, 0.01, 10.0))


def parse_chat_request(body, ecg_token: str, limits: Limits, default_max_tokens: int = 256) -> ChatJob:
    """A checked ``ChatJob`` from a /v1/chat/completions JSON body (RequestError otherwise)."""
    if not isinstance(body, dict):
        _fail("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256 or not is_utf8(model):
        _fail("'model' must name a served model (see GET /v1/models)")
    question, history, ecg = parse_conversation(body.get("messages"), ecg_token, limits)
    opts = body.get("stream_options") or {}
    return ChatJob(model=model, question=question, history=history, ecg_part=ecg,
                   sampling=parse_sampling(body, limits, default_max_tokens),
                   stream=bool(body.get("stream", False)),
                   include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")))


# -- the ECG part --------------------------------------------------------------------------------
def decode_inline(spec: dict, limits: Limits):
    """A ``Record`` from an inline ECG part (base64 float32 lead-major, rate, lead names)."""
    leads, fs, units = spec.get("leads"), spec.get("fs"), spec.get("units", "mV")
    if not isinstance(leads, list) or not leads or not all(isinstance(x, str) for x in leads):
        _fail("ecg.leads must be a non-empty list of lead names (e.g. ['I', 'II', ..., 'V6'])")
    if len(leads) > limits.max_leads:
        _fail(f"ecg.leads: {len(leads)} leads, more than the limit of {limits.max_leads}", 413, "too_large")
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not 50 <= fs <= 20_000:
        _fail(f"ecg.fs must be the sampling rate in Hz (50 to 20000), got {fs!r}")
    if units not in ("mV", "uV", "V"):
        _fail(f"ecg.units must be 'mV', 'uV' or 'V', got {units!r}")
    data = spec.get("data")
    if not isinstance(data, str):
        _fail("ecg.data must be a base64 string of float32 samples")
    if len(data) > 4 * (len(leads) * limits.max_samples * 4 + 2) // 3 + 4:
        _fail(f"ecg.data is larger than {len(leads)} leads x {limits.max_samples} float32 samples", 413, "too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        _fail("ecg.data is not valid base64")
    if not raw or len(raw) % (4 * len(leads)):
        _fail(f"ecg.data holds {len(raw)} bytes, not a whole number of float32 samples for {len(leads)} leads")
    x = np.frombuffer(raw, dtype="<f4").reshape(len(leads), -1).astype(np.float32)
    if not np.isfinite(x).all():
        _fail("ecg.data holds NaN or infinite samples")
    names = [canonical_lead(name) for name in leads]   # unknown names pass; missing model leads fail later
    if len(set(names)) != len(names):
        _fail(f"ecg.leads names a lead twice: {leads}")
    return Record(signal=x, fs=float(fs), leads=tuple(names), units=units, record_id="inline ECG")


def resolve_ecg_path(rel, ecg_dir: Path | None) -> Path:
    """The file ``rel`` names under ``ecg_dir``, links followed, or RequestError (403 outside it,
    404 missing, 400 malformed). A WFDB record name without its extension is completed to its
    .hea FIRST and that file is then resolved and checked exactly like a path given with it;
    ``container.h5#3`` is checked as ``container.h5``."""
    if ecg_dir is None:
        _fail("ECG paths are disabled on this server (it was started without --ecg-dir); send the "
              "samples inline", 403, "paths_disabled")
    if not isinstance(rel, str) or not rel or "\x00" in rel or not is_utf8(rel):
        _fail("ecg.path must be a non-empty string")
    if len(rel) > MAX_PATH_CHARS or any(len(part.encode()) > MAX_NAME_CHARS for part in rel.split("/")):
        _fail(f"ecg.path is too long (at most {MAX_PATH_CHARS} characters, {MAX_NAME_CHARS} bytes "
              "per name)")
    root = Path(ecg_dir).resolve()
    base, sep, index = rel.rpartition("#")
    name, suffix = (base, sep + index) if sep and index.isdigit() else (rel, "")
    try:
        p = _under(root, root / name, rel)
        if not p.exists():
            hea = root / (name + ".hea")
            if not (hea.is_symlink() or hea.exists()):
                _fail(f"ecg.path {rel!r}: no such record under the server's ECG folder", 404, "not_found")
            p = _under(root, hea, rel)
            if not p.exists():
                _fail(f"ecg.path {rel!r}: no such record under the server's ECG folder", 404, "not_found")
    except OSError as exc:      # ENAMETOOLONG, ELOOP, EACCES ...: the name cannot be used
        _fail(f"ecg.path {rel!r} cannot be used ({os.strerror(exc.errno) if exc.errno else 'bad path'})")
    return Path(str(p) + suffix)


def _under(root: Path, path: Path, rel: str) -> Path:
    p = path.resolve()
    if p != root and root not in p.parents:
        _fail(f"ecg.path {rel!r} is outside the server's ECG folder", 403, "path_outside_ecg_dir")
    return p


def ecg_record(spec, ecg_dir: Path | None, limits: Limits):
    """The part's Record and a display name (never the server's absolute path)."""
    if not isinstance(spec, dict):
        _fail("an ECG part needs an 'ecg' object with 'data' (inline) or 'path'")
    if ("data" in spec) == ("path" in spec):
        _fail("an ECG part needs exactly one of ecg.data (inline samples) or ecg.path")
    if "data" in spec:
        return decode_inline(spec, limits), "inline ECG"
    p = resolve_ecg_path(spec["path"], ecg_dir)
    try:
        rec = read_record(str(p), max_bytes=limits.max_decoded_bytes)
    except EcgReadError as exc:
        status = 413 if exc.kind == "record_too_large" else 403 if exc.kind == "signal_file_outside" else 422
        _fail(f"ecg.path {spec['path']!r} cannot be read ({exc.kind}): {public_message(str(exc), ecg_dir)}",
              status, exc.kind if status != 422 else "unreadable_ecg")
    except (OSError, ValueError) as exc:
        _fail(f"ecg.path {spec['path']!r} cannot be read: {type(exc).__name__}", 422, "unreadable_ecg")
    if rec.n_samples > limits.max_samples:
        _fail(f"ecg.path {spec['path']!r}: {rec.n_samples} samples per lead, more than the limit of "
              f"{limits.max_samples}", 413, "too_large")
    return rec, spec["path"]


def public_message(msg: str, *folders) -> str:
    """``msg`` fit to send to a client: paths under ``folders`` (as given and resolved) made
    relative to them, and any other absolute path cut to its last name."""
    for folder in folders:
        if folder:
            for form in {str(Path(folder).resolve()), os.path.abspath(str(folder)), str(folder)}:
                msg = msg.replace(form.rstrip("/") + "/", "")
    return _ABS_PATH.sub("", msg)


def model_input(spec, config, ecg_dir: Path | None, limits: Limits, measurements: list | None = None,
                seconds: dict | None = None) -> np.ndarray:
    """The ECG part -> the model's input array (the same preprocessing ``report`` uses);
    ``measurements`` (a list) gets the record's grounding measurements, as read_for_model's;
    ``seconds`` (a dict) gets the time spent to "read" and to "preprocess" (checks, model input,
    measurements)."""
    t0 = time.perf_counter()
    rec, name = ecg_record(spec, ecg_dir, limits)
    t1 = time.perf_counter()
    flags = physiological_flags(rec.signal, rec.leads, rec.units)
    if NO_CONTENT in flags:     # no confident report on a flat, saturated or absurd signal
        _fail(f"the ECG has no physiological content ({', '.join(flags[:-1][:6])}); the model would "
              "report on noise", 422, NO_CONTENT)
    try:
        x = preprocess_for_model(rec, config, record_id=name)
    except (EcgReadError, ValueError) as exc:
        _fail(f"the ECG cannot be brought to the model's input ({getattr(exc, 'kind', 'bad_ecg_input')}): "
              f"{public_message(str(exc), ecg_dir)}", 422, "unusable_ecg")
    if measurements is not None:
        measurements.append(measure_for_grounds(rec))
    if seconds is not None:
        seconds.update(read=t1 - t0, preprocess=time.perf_counter() - t1)
    return x
