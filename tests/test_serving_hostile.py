"""`ecgbatch serve` attacked on loopback (the session's one server, conftest's ``ecg_server``:
--api-key, a copy of sample_archive/ as --ecg-dir, --max-body-mb 2, --max-in-flight 8,
--body-timeout 5). Each case of issue 18 as an attacker sends it: links and headers that lead out
of --ecg-dir, malformed bodies, decompression bombs through /v1/ecg/preview, stalled bodies,
disconnects, garbage signals. Every answer is a 4xx in OpenAI's error shape that leaks nothing
(no file contents, sizes, or server paths), and the server keeps answering."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import time
import zipfile
import zlib

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.shared, pytest.mark.slow]

RECORD = "cinc2021/A0689.hea"
SECRET = "TOPSECRET-42 abc"


@pytest.fixture(scope="module")
def srv(ecg_server):
    with httpx.Client(base_url=ecg_server["url"], timeout=120,
                      headers={"Authorization": f"Bearer {ecg_server['key']}"}) as c:
        yield ecg_server, c


@pytest.fixture(scope="module")
def hostile(ecg_server):
    """Files an attacker could plant in (or beside) --ecg-dir."""
    d, out = ecg_server["ecg_dir"] / "hostile", ecg_server["outside"]
    d.mkdir(exist_ok=True)
    (out / "secret.hea").write_text(f"{SECRET}\n")
    (out / "outside.dat").write_bytes(np.zeros(12 * 1000, "<i2").tobytes())
    (d / "link2.hea").symlink_to(out / "secret.hea")
    sig = lambda f: "".join(f"{f} 16 1000/mV 16 0 0 0 0 {lead}\n" for lead in
                            ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"))
    (d / "dotdot.hea").write_text("dotdot 12 500 1000\n" + sig("../../outside/outside.dat"))
    (d / "passwd.hea").write_text("passwd 12 500 1000\n" + sig("/etc/passwd"))
    (d / "inside.hea").write_text("inside 12 500 1000\n" + sig("../cinc2021/A0689.mat"))
    return d


def chat_body(ecg, text="Please describe this ECG.", max_tokens=2, **kw) -> dict:
    return {"model": "tiny", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "ecg", "ecg": ecg}, {"type": "text", "text": text}]}],
            **kw}


def openai_error(r: httpx.Response, lo=400, hi=499) -> dict:
    """The response is an OpenAI-shaped JSON error with a status in [lo, hi]; returns its error."""
    assert lo <= r.status_code <= hi, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["type"] and err["code"]
    assert "Traceback" not in r.text
    return err


def no_leak(text: str, ecg_server) -> None:
    for secret in (SECRET, "root:", "1294", "/etc/", str(ecg_server["ecg_dir"]), str(ecg_server["outside"]),
                   "/tmp/", "ecgbatch-upload-"):
        assert secret not in text, (secret, text)


def test_links_and_names_that_leave_the_ecg_dir(srv, hostile):
    ecg_server, c = srv
    for path, code in [("hostile/link2", "path_outside_ecg_dir"), ("hostile/link2.hea", "path_outside_ecg_dir"),
                       ("hostile/dotdot", "signal_file_outside"), ("hostile/dotdot.hea", "signal_file_outside"),
                       ("hostile/passwd.hea", "signal_file_outside"), ("hostile/passwd", "signal_file_outside"),
                       ("hostile/inside.hea", "signal_file_outside")]:
        r = c.post("/v1/chat/completions", json=chat_body({"path": path}))
        err = openai_error(r, 403, 403)
        assert err["code"] == code, (path, err)
        no_leak(r.text, ecg_server)


BIG = "9" * 5000


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,                                   # nested 100,000 deep
    b'{"a":' * 40 + b"1" + b"}" * 40,                                  # deeper than the server allows
    json.dumps(chat_body({"path": RECORD})).replace('"max_tokens": 2', '"max_tokens": ' + BIG).encode(),
    json.dumps(chat_body({"path": RECORD})).replace('"max_tokens": 2', '"max_tokens": ' + BIG[:4000]).encode(),
    json.dumps(chat_body({"path": RECORD})).replace('"max_tokens": 2', '"max_tokens": 1e400').encode(),
    json.dumps(chat_body({"path": RECORD}, text="\ud800")).encode(),   # a lone surrogate (\ud800 escape)
    json.dumps(chat_body({"path": RECORD}, model="\udfff")).encode(),
    json.dumps(chat_body({"path": "x" * 300})).encode(),                # ENAMETOOLONG
    json.dumps(chat_body({"path": "a/" * 600})).encode(),
    json.dumps(chat_body({"path": "cinc2021/A0689\u0000.hea"})).encode(),
    json.dumps(chat_body({"path": ["x"]})).encode(),
    json.dumps(chat_body({"data": "AAAA", "fs": 1e308, "leads": ["I"]})).encode(),
    json.dumps(chat_body({"data": "AAAA", "fs": 500, "leads": [{"x": 1}]})).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": 5}]}).encode(),
    json.dumps({"model": "tiny", "messages": [5]}).encode(),
    json.dumps({"model": ["tiny"], "messages": []}).encode(),
    json.dumps({**chat_body({"path": RECORD}), "stop": [None]}).encode(),
    json.dumps({**chat_body({"path": RECORD}), "n": {"a": 1}}).encode(),
    b"\xff\xfe{}", b"", b"null", b"[]", b"\"x\"", b"1" * 5000, b'{"model": "tiny", "messages": [',
])
def test_malformed_bodies_are_4xx_in_openai_shape(srv, raw):
    ecg_server, c = srv
    r = c.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    openai_error(r)
    no_leak(r.text, ecg_server)


def test_other_routes_and_methods_answer_in_openai_shape(srv):
    ecg_server, c = srv
    openai_error(c.get("/v1/nope"), 404, 404)
    openai_error(c.get("/v1/chat/completions"), 405, 405)
    openai_error(c.post("/v1/ecg/preview", content=b"[" * 100_000), 400, 400)
    openai_error(httpx.post(ecg_server["url"] + "/v1/chat/completions", json={}), 401, 401)


def _upload(c, name: str, data: bytes) -> httpx.Response:
    return c.post("/v1/ecg/preview", json={"files": [{"name": name, "data": base64.b64encode(data).decode()}]})


def _hdf5_bomb(tmp_path) -> bytes:
    """12 x 24 M float32 zeros (1.15 GB) in gzip chunks: ~1 MB on the wire. Built from one
    compressed chunk written 24 times (write_direct_chunk), so making it costs ~0.2 s."""
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "bomb.h5"
    n, chunk = 24_000_000, 1_000_000
    z = zlib.compress(bytes(12 * chunk * 4), 9)
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("ecg", shape=(12, n), dtype="<f4", chunks=(12, chunk), compression="gzip")
        for k in range(n // chunk):
            ds.id.write_direct_chunk((0, k * chunk), z)
        f.attrs["fs"] = 500
    return p.read_bytes()


def _npz_bomb() -> bytes:
    """An .npz of 12 x 4 M float32 zeros (192 MB) in deflate: ~190 KB."""
    buf, out = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((12, 4_000_000), np.float32))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("signal.npy", buf.getvalue())
    return out.getvalue()


def _rss(pid: int) -> dict[str, int]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def test_decompression_bombs_are_refused_undecoded_with_flat_memory(srv, tmp_path):
    ecg_server, c = srv
    bombs = {"b.h5": _hdf5_bomb(tmp_path), "b.npy": _npz_bomb()}
    assert all(len(b) < 1_500_000 for b in bombs.values())
    pid = ecg_server["pid"]
    with open(f"/proc/{pid}/clear_refs", "w") as fh:   # reset the server's peak RSS (VmHWM) to now
        fh.write("5")
    before = _rss(pid)["VmRSS"]
    for name, data in bombs.items():
        t = time.perf_counter()
        r = _upload(c, name, data)
        took = time.perf_counter() - t
        err = openai_error(r, 413, 413)
        # refused from the declared shape, before decoding: the peak-RSS bound below proves it (a
        # time bound here failed under load at 1.7 s: timings belong in bench/, not in tests)
        assert "budget" in err["message"] and "not decoded" in err["message"], (name, took, err)
        print(f"bomb {name}: {len(data)} bytes sent, 413 in {took * 1000:.0f} ms")
        no_leak(r.text, ecg_server)
    grew = _rss(pid)["VmHWM"] - before
    print(f"server peak RSS growth over both bombs: {grew / 2**20:.1f} MB")
    assert grew < 100 << 20, f"server peak RSS grew by {grew >> 20} MB"   # the bombs hold 1.3 GB


def test_upload_errors_do_not_show_the_temporary_folder(srv):
    ecg_server, c = srv
    for name, data in [("x.hea", b""), ("x.hea", b"   \n"), ("x.hea", b"x 12 500 1000\n"),
                       ("x.hea", b"x 1 500 10\n../outside.dat 16 200 16 0 0 0 0 I\n"), ("x.npy", b"\x93NUMPY")]:
        r = _upload(c, name, data)
        openai_error(r)
        no_leak(r.text, ecg_server)


def _inline(x: np.ndarray) -> dict:
    return {"data": base64.b64encode(np.asarray(x, "<f4").tobytes()).decode(), "fs": 500,
            "leads": ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"], "units": "mV"}


@pytest.mark.parametrize("x", [np.full((12, 5000), 3e38), np.zeros((12, 5000)),
                               np.where(np.arange(5000) % 2, 3e38, -3e38) * np.ones((12, 1)),
                               np.clip(np.sin(np.arange(5000) / 10) * 50, -1, 1) * np.ones((12, 1))])
def test_garbage_signal_gets_no_confident_report(srv, x):
    ecg_server, c = srv
    err = openai_error(c.post("/v1/chat/completions", json=chat_body(_inline(x))), 422, 422)
    assert err["code"] == "no_physiological_content"


def _stall(ecg_server, path="/v1/chat/completions") -> socket.socket:
    """A connection that sends its headers and part of its body, then nothing."""
    host, port = ecg_server["url"].removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ecg_server['key']}\r\n"
               "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"model\": ").encode())
    return s


def test_stalled_bodies_do_not_starve_valid_requests(srv):
    ecg_server, c = srv
    stalled = [_stall(ecg_server) for _ in range(12)]      # more than --max-in-flight 8
    try:
        time.sleep(0.5)
        r = c.post("/v1/chat/completions", json=chat_body({"path": RECORD}))
        assert r.status_code == 200, r.text[:300]
        assert c.get("/health").status_code == 200
        t = time.perf_counter()
        for s in stalled:                                   # each is answered 408 once its time is up
            s.settimeout(30)
            head = s.recv(4096).decode("latin-1")
            assert head.startswith("HTTP/1.1 408"), head[:200]
            assert '"body_timeout"' in head or "body_timeout" in s.recv(4096).decode("latin-1")
        assert time.perf_counter() - t < 15
    finally:
        for s in stalled:
            s.close()


def test_a_disconnect_logs_one_line_and_no_traceback(srv):
    ecg_server, c = srv
    log = ecg_server["log"]
    n = log.read_text().count("disconnected before its request body")
    for _ in range(3):
        s = _stall(ecg_server)
        time.sleep(0.2)
        s.close()
    deadline = time.time() + 10
    while time.time() < deadline and log.read_text().count("disconnected before its request body") < n + 3:
        time.sleep(0.2)
    text = log.read_text()
    assert text.count("disconnected before its request body") == n + 3
    assert "Traceback" not in text
    assert c.post("/v1/chat/completions", json=chat_body({"path": RECORD})).status_code == 200
