"""A static site over a report table (``ecgbatch report --input A --html DIR``): one page per
reported record (12-lead plot, the generated report, the prompt, the record's labels and
metadata) and an index page listing every record and every failure. Plain HTML + PNG, no
JavaScript, no server: open DIR/index.html in a browser. Every file is written atomically."""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from ecgbatch.llava.grounding import finding_text
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.workspace import ReportTable


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        ".report{white-space:pre-wrap;background:#f6f6f6;padding:1em;border-left:4px solid #4a7}"
        "img.ecg{max-width:100%;border:1px solid #ddd}.failed{color:#a22}")


def page_name(record_id: str) -> str:
    """A file name for a record id (ids hold slashes; a short hash keeps two ids apart)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id)[:80]
    return f"{slug}-{hashlib.sha1(record_id.encode()).hexdigest()[:8]}"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _doc(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def _plot(source: str, record_id: str, dest: Path) -> str | None:
    """The record's 12-lead plot as PNG at ``dest``; None and the reason when it cannot be drawn."""
    from ecgbatch.signal.plot import plot_ecg

    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp.png")
    try:
        with src.local_source(src.source_from_json(src.source_to_json(source))) as local:
            rec = local.read()
        plot_ecg(rec, tmp, dpi=90, title=record_id)
        os.replace(tmp, dest)
        return None
    except Exception as exc:  # noqa: BLE001 - the page says why it has no plot
        tmp.unlink(missing_ok=True)
        return f"{type(exc).__name__}: {exc}"


def record_page(r: dict[str, Any], plot_file: str | None, plot_error: str | None) -> str:
    e = html.escape
    meta = [("source", r["source"]), ("model", r["model"]), ("adapter", r.get("adapter") or "-"),
            ("prompt mode", r["prompt_mode"]), ("age", r.get("age")), ("sex", r.get("sex")),
            ("diagnoses (from the record's header)", r.get("diagnoses") or "-"),
            ("label codes", ", ".join(r.get("labels") or []) or "-"),
            ("tokens", f"{r['n_prompt_tokens']} prompt, {r['n_output_tokens']} output ({r['finish_reason']})")]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in meta)
    plot = (f'<img class=ecg id=plot src="plots/{e(plot_file)}" alt="12-lead ECG of {e(r["record_id"])}">'
            if plot_file else f'<p class=failed id=plot>no plot: {e(plot_error or "")}</p>')
    body = (f'<p><a href="index.html">&larr; all records</a></p><h1>{e(r["record_id"])}</h1>{plot}'
            f'<h2>Report</h2><div class=report id=report>{e(r["report"].strip())}</div>'
            f'{grounds_html(r)}'
            f'<h2>Prompt</h2><p id=question>{e(r["question"])}</p>'
            f'<h2>Record</h2><table id=labels>{rows}</table>')
    return _doc(f"ECG {r['record_id']}", body)


def grounds_html(r: dict[str, Any]) -> str:
    """The row's findings (what ecgbatch measured and found) and the report's contradictions."""
    e = html.escape
    found = json.loads(r.get("findings") or "[]")
    said = json.loads(r.get("contradictions") or "[]")
    items = "".join(f"<li>{e(finding_text(f))} <small>({e(f['source'])})</small></li>" for f in found)
    bad = "".join(f"<li><q>{e(c['statement'])}</q>: {e(c['reason'])}</li>" for c in said)
    return (f'<h2>Findings</h2><ul id=findings>{items or "<li>none measured</li>"}</ul>'
            f'<h2>Contradictions</h2><ul id=contradictions>{bad or "<li>none found</li>"}</ul>')


def index_page(entries: list[tuple[str, dict[str, Any]]], failures: list[dict[str, Any]], title: str) -> str:
    e = html.escape
    rows = "".join(f'<tr><td><a href="{e(name)}.html">{e(r["record_id"])}</a></td>'
                   f'<td>{e(", ".join(r.get("labels") or []))}</td>'
                   f'<td>{e(r["report"].strip()[:160])}</td></tr>' for name, r in entries)
    fail = "".join(f'<tr class=failed><td>{e(f["record_id"])}</td><td>{e(f["error_kind"])}</td>'
                   f'<td>{e(f["message"][:300])}</td></tr>' for f in failures)
    body = (f"<h1>{e(title)}</h1><p>{len(entries)} reports, {len(failures)} failures</p>"
            f"<table id=records><tr><th>record</th><th>labels</th><th>report</th></tr>{rows}</table>"
            + (f"<h2>Failures</h2><table id=failures><tr><th>record</th><th>kind</th><th>message</th></tr>"
               f"{fail}</table>" if failures else ""))
    return _doc(title, body)


def write_site(table: ReportTable, out_dir: str | os.PathLike, limit: int | None = None) -> Path:
    """Write (or refresh) the site of ``table`` in ``out_dir``; returns the index page."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    rows = sorted(table.read_table().to_pylist(), key=lambda r: r["record_id"])[:limit]
    entries = []
    for r in rows:
        name = page_name(r["record_id"])
        png = out / "plots" / f"{name}.png"
        err = None if png.is_file() else _plot(r["source"], r["record_id"], png)
        _write(out / f"{name}.html", record_page(r, png.name if err is None else None, err))
        entries.append((name, r))
    fails = table.read_failures()
    failures = sorted(fails.to_pylist(), key=lambda f: f["record_id"]) if fails is not None else []
    index = out / "index.html"
    _write(index, index_page(entries, failures, f"ECG reports: {table.key}"))
    return index
