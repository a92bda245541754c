"""Standard 12-lead ECG plot on calibrated paper (matplotlib, Agg backend).

Layout as printed by electrocardiographs: three rows of four 2.5-s columns
(I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6), each lead shown in its own column's time window,
plus a 10-s lead-II rhythm strip; a 1-mV calibration pulse starts every row. 25 mm/s, 10 mm/mV
on pink paper (1-mm minor, 5-mm major grid). The figure is laid out in millimetres and its size
in inches is derived from them, so a printout at 100 % has the right paper scale at any dpi."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgbatch.signal import filters
from ecgbatch.signal.preprocess import lead_key, unit_factor

MM_PER_S = 25.0
MM_PER_MV = 10.0
GRID_ROWS = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
COLUMN_S = 2.5
STRIP_S = 10.0
# Paper layout in mm (multiples of 5 so the major grid closes on the edges).
CAL_MM = 10.0  # left margin holding the calibration pulse
RIGHT_MM = 5.0
HEADER_MM = 10.0
ROW_MM = 30.0
BOTTOM_MM = 5.0
PAPER_W_MM = CAL_MM + STRIP_S * MM_PER_S + RIGHT_MM  # 265 mm
PAPER_H_MM = HEADER_MM + 4 * ROW_MM + BOTTOM_MM  # 135 mm
MINOR_COLOR = "#f7c9cf"
MAJOR_COLOR = "#ec8f9c"
DISPLAY_BAND_HZ = (0.5, 100.0)  # display filter: baseline wander off, QRS detail kept


def paper_size_px(dpi: float) -> tuple[int, int]:
    """Pixel size of the PNG that plot_ecg writes at ``dpi``."""
    return int(PAPER_W_MM / 25.4 * dpi), int(PAPER_H_MM / 25.4 * dpi)  # as matplotlib: floor


def _grid(ax) -> None:
    from matplotlib.collections import LineCollection

    for step, color, lw in ((1.0, MINOR_COLOR, 0.25), (5.0, MAJOR_COLOR, 0.6)):
        xs = np.arange(0.0, PAPER_W_MM + 1e-9, step)
        ys = np.arange(0.0, PAPER_H_MM + 1e-9, step)
        segs = [[(x, 0), (x, PAPER_H_MM)] for x in xs] + [[(0, y), (PAPER_W_MM, y)] for y in ys]
        ax.add_collection(LineCollection(segs, colors=color, linewidths=lw, zorder=0))


def _calibration(ax, baseline_mm: float) -> None:
    x0 = 2.0
    w = 0.2 * MM_PER_S  # 200-ms pulse
    xs = [x0, x0 + 1, x0 + 1, x0 + 1 + w, x0 + 1 + w, x0 + 2 + w]
    ys = [0, 0, MM_PER_MV, MM_PER_MV, 0, 0]
    ax.plot(xs, np.asarray(ys) + baseline_mm, color="black", lw=0.8, zorder=3)


def _display_signal(record) -> tuple[dict[str, np.ndarray], float]:
    """lead_key -> display-filtered trace (mV, NaN -> 0)."""
    sig = np.nan_to_num(np.asarray(record.signal, dtype=np.float64))
    fs = float(record.fs)
    lo, hi = DISPLAY_BAND_HZ
    hi = min(hi, 0.45 * fs)
    if sig.shape[1] > 60:
        sig = filters.bandpass(sig, fs, lo, hi, order=2)
    return {lead_key(n): sig[i] for i, n in enumerate(record.leads)}, fs


def _trace(ax, y: np.ndarray | None, fs: float, t0: float, t1: float, x_mm: float,
           baseline_mm: float, label: str) -> None:
    ax.text(x_mm + 1, baseline_mm + 0.45 * ROW_MM, label if y is not None else f"{label} (missing)",
            fontsize=7, fontweight="bold", va="top", zorder=4)
    if y is None:
        return
    a, b = int(round(t0 * fs)), min(int(round(t1 * fs)), len(y))
    if b <= a:
        return
    t = np.arange(a, b) / fs
    ax.plot(x_mm + (t - t0) * MM_PER_S, baseline_mm + y[a:b] * MM_PER_MV, color="black",
            lw=0.6, zorder=3, solid_joinstyle="round")


def plot_ecg(record, out_path, measurements=None, dpi: int = 200, title: str | None = None) -> Path:
    """Write the standard 12-lead plot of ``record`` (signal in mV) to ``out_path`` (PNG/PDF/SVG).
    ``measurements``: an ecgbatch.signal.Measurements to print in the header. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    units = str(getattr(record, "units", "mV") or "mV")
    if units.strip().lower() not in ("mv", "millivolt", "millivolts"):
        f = unit_factor(units, "mV")
        if f is None:
            raise ValueError(f"cannot plot at 10 mm/mV a signal in units {units!r}")
        record = type("Scaled", (), {"signal": np.asarray(record.signal) * f, "fs": record.fs,
                                     "leads": record.leads})()
    traces, fs = _display_signal(record)

    fig = Figure(figsize=(PAPER_W_MM / 25.4, PAPER_H_MM / 25.4), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, PAPER_W_MM)
    ax.set_ylim(0, PAPER_H_MM)
    ax.set_axis_off()
    ax.set_facecolor("white")
    _grid(ax)

    top = PAPER_H_MM - HEADER_MM
    for r, row in enumerate(GRID_ROWS):
        base = top - (r + 0.5) * ROW_MM
        _calibration(ax, base)
        for c, lead in enumerate(row):
            x_mm = CAL_MM + c * COLUMN_S * MM_PER_S
            _trace(ax, traces.get(lead_key(lead)), fs, c * COLUMN_S, (c + 1) * COLUMN_S, x_mm,
                   base, lead)
            if c:  # lead-change marker, as on paper
                ax.plot([x_mm, x_mm], [base - 2.5, base + 2.5], color="black", lw=0.8, zorder=3)
    base = top - 3.5 * ROW_MM
    _calibration(ax, base)
    _trace(ax, traces.get(lead_key(RHYTHM_LEAD)), fs, 0.0, STRIP_S, CAL_MM, base, RHYTHM_LEAD)

    head = title or ""
    if measurements is not None and measurements.quality != "failed":
        m = measurements
        def v(x):
            return "-" if x is None or not np.isfinite(x) else f"{x:.0f}"

        head += (f"   HR {v(m.hr_bpm)} bpm   PR {v(m.pr_ms)} ms   QRS {v(m.qrs_ms)} ms   "
                 f"QT/QTc {v(m.qt_ms)}/{v(m.qtc_ms)} ms")
    ax.text(2, PAPER_H_MM - 2, head.strip(), fontsize=8, va="top", zorder=4)
    ax.text(PAPER_W_MM - 2, PAPER_H_MM - 2,
            f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   {DISPLAY_BAND_HZ[0]:g}-{min(DISPLAY_BAND_HZ[1], 0.45 * fs):g} Hz   "
            f"{fs:g} Hz sampling", fontsize=7, va="top", ha="right", zorder=4)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    return out
