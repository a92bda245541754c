"""`ecgbatch inspect RECORD [--json] [--plot out.png]`: what one ECG file holds (metadata
without patient identifiers, signal summary, quality flags) and its waveform measurements."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgbatch.commands.common import fail


def _summary(rec) -> dict[str, Any]:
    import numpy as np

    from ecgbatch.signal.voltage import rescaled_per_lead

    sig = np.asarray(rec.signal)
    finite = np.isfinite(sig)
    return {
        "record_id": rec.record_id,
        "fs": float(rec.fs),
        "n_leads": rec.n_leads,
        "leads": list(rec.leads),
        "n_samples": rec.n_samples,
        "duration_s": round(rec.duration_s, 3),
        "units": rec.units,
        "nan_samples": int((~finite).sum()),
        "peak_to_peak": {name: (round(float(np.ptp(sig[i][finite[i]])), 3) if finite[i].any() else None)
                         for i, name in enumerate(rec.leads)},
        # every lead the same peak to peak: rescaled one by one, so no axis and no LVH voltages
        "rescaled_per_lead": rescaled_per_lead(sig, rec.leads),
    }


def inspect_record(path: str, plot: Optional[Path] = None, dpi: int = 200) -> dict[str, Any]:
    """The JSON-able description of one record (what `inspect --json` prints)."""
    from ecgbatch.io import read_record, scrub_identifiers
    from ecgbatch.signal.measure import ecgchat_wave_text, measure

    rec = read_record(path)
    meta = scrub_identifiers(dict(rec.meta))  # read_record scrubs too: never show identifiers
    quality = list(meta.pop("quality", []) or [])
    if meta.get("acquired"):  # an exam date identifies a patient (HIPAA safe harbour): year only
        meta["acquired_year"] = str(meta.pop("acquired"))[:4]
    out: dict[str, Any] = {"path": str(path), "record": _summary(rec), "quality_flags": quality,
                           "meta": meta, "measurements": {}}
    meas = {}
    for method in ("multilead", "ecgchat"):
        try:
            meas[method] = measure(rec, method=method)
            out["measurements"][method] = meas[method].to_dict()
        except Exception as exc:  # e.g. no lead II: say why instead of failing the whole inspect
            out["measurements"][method] = {"quality": "failed",
                                           "error": f"{type(exc).__name__}: {exc}"}
    if "ecgchat" in meas:
        out["ecgchat_wave_text"] = ecgchat_wave_text(meas["ecgchat"])
    if plot is not None:
        from ecgbatch.signal.plot import plot_ecg

        out["plot"] = str(plot_ecg(rec, plot, measurements=meas.get("multilead"), dpi=dpi,
                                   title=f"record {rec.record_id}   {rec.duration_s:.1f} s"))
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if v != int(v) else f"{int(v)}"
    s = str(v)
    return s if len(s) <= 100 else s[:97] + "..."


def _print_rich(info: dict[str, Any]) -> None:
    con = Console()
    r = info["record"]
    t = Table(title=f"ECG record {r['record_id']}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for k in ("fs", "n_samples", "duration_s", "units", "n_leads"):
        t.add_row(k, _fmt(r[k]))
    t.add_row("leads", " ".join(r["leads"]))
    t.add_row("NaN samples", str(r["nan_samples"]))
    t.add_row("quality flags", ", ".join(info["quality_flags"]) or "none")
    for k, v in info["meta"].items():
        t.add_row(f"meta.{k}", _fmt(v))
    con.print(t)
    m = Table(title="Waveform measurements (lead II beats; multilead = global QRS/T from all leads)")
    m.add_column("")
    methods = list(info["measurements"])
    for name in methods:
        m.add_column(name, justify="right")
    rows = [("heart rate (bpm)", "hr_bpm"), ("RR (ms)", "rr_ms"), ("PR (ms)", "pr_ms"),
            ("QRS (ms)", "qrs_ms"), ("QT (ms)", "qt_ms"), ("QTc Bazett (ms)", "qtc_ms"),
            ("QRS axis (degrees)", "axis_deg"), ("axis category (AHA)", "axis_category"),
            ("RR RMSSD / mean RR", "rr_nrmssd"), ("RR irregular (> 0.1)", "rr_irregular"),
            ("Sokolow-Lyon (mV)", "sokolow_lyon_mv"), ("Cornell voltage (mV)", "cornell_mv"),
            ("LVH voltage criteria met", "lvh_voltage"),
            ("P/R/T mean peak (sample)", None), ("beats", "n_beats"), ("quality", "quality")]
    for label, key in rows:
        cells = []
        for name in methods:
            d = info["measurements"][name]
            if key is None:
                cells.append("/".join(_fmt(d.get(k)) for k in ("p_wave", "r_wave", "t_wave")))
            else:
                cells.append(_fmt(d.get(key)))
        m.add_row(label, *cells)
    con.print(m)
    if r.get("rescaled_per_lead"):
        con.print("[yellow]every lead spans the same peak to peak (rescaled one by one, whatever the units "
                  "say): no QRS axis and no LVH voltages are stated[/yellow]")
    for name in methods:
        if "error" in info["measurements"][name]:
            con.print(f"[yellow]{name}: {info['measurements'][name]['error']}[/yellow]")
    if "ecgchat_wave_text" in info:
        con.print(f"ECG-Chat wave text: {info['ecgchat_wave_text']!r}", soft_wrap=True)
    if "plot" in info:
        con.print(f"plot written to {info['plot']}")


def inspect_command(
    record: str = typer.Argument(..., help="ECG file (WFDB .hea, .mat, .npy, .h5#i, MUSE/HL7 XML)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a 12-lead paper plot (PNG/PDF/SVG)"),
    dpi: int = typer.Option(200, "--dpi", min=50, max=1200, help="plot resolution"),
) -> None:
    """Show one record's metadata (no patient identifiers), signal summary, quality flags and
    waveform measurements (HR, PR, QRS, QT, QTc); optionally plot it on ECG paper."""
    import json

    from ecgbatch.io.errors import EcgReadError

    try:
        info = inspect_record(record, plot=plot, dpi=dpi)
    except EcgReadError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(info, default=str, allow_nan=False))
    else:
        _print_rich(info)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
