"""The 12-lead paper plot: physical size, calibration pulse at 10 mm/mV, paper grid, traces."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.io.record import Record
from ecgbatch.signal.plot import PAPER_H_MM, PAPER_W_MM, HEADER_MM, ROW_MM, paper_size_px, plot_ecg

wfdb = pytest.importorskip("wfdb")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def ludb1(shared_data):
    sig, f = wfdb.rdsamp(str(shared_data / "ludb" / "data" / "1"))
    return Record(signal=sig.T.astype(np.float32), fs=500.0, leads=tuple(f["sig_name"]), record_id="1")


def _px(mm: float, dpi: int) -> int:
    return int(round(mm / 25.4 * dpi))


def test_plot_is_calibrated_paper(tmp_path, ludb1):
    dpi = 150
    out = plot_ecg(ludb1, tmp_path / "ecg.png", dpi=dpi)
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    h, w, _ = img.shape
    assert (w, h) == paper_size_px(dpi)
    assert abs(w / dpi * 25.4 - PAPER_W_MM) < 1 and abs(h / dpi * 25.4 - PAPER_H_MM) < 1
    dark = (img.max(axis=2) < 90)
    pink = (img[..., 0] > 200) & (img[..., 1] < 215) & (img[..., 2] < 225)
    assert pink.mean() > 0.03  # the grid is there
    assert 0.005 < dark.mean() < 0.2  # traces and text, not a black page
    # Calibration pulse of the first row: 1 mV = 10 mm tall, 200 ms = 5 mm wide, at x = 3..8 mm
    col = dark[:, _px(5.5, dpi)]
    base_mm = PAPER_H_MM - HEADER_MM - 0.5 * ROW_MM  # from the bottom
    top_row = _px(PAPER_H_MM - (base_mm + 10), dpi)
    assert col[top_row - 2:top_row + 3].any()
    rising = dark[top_row - _px(3, dpi):_px(PAPER_H_MM - base_mm + 3, dpi), _px(3, dpi) - 1:_px(3, dpi) + 2]
    ys = np.nonzero(rising.any(axis=1))[0]  # the pulse's rising edge at x = 3 mm
    assert abs((ys.max() - ys.min()) / dpi * 25.4 - 10) < 1.0  # 1 mV drawn 10 mm tall
    # The rhythm strip spans the full 10 s (250 mm): dark pixels near the right end of its band
    strip_y = _px(PAPER_H_MM - (PAPER_H_MM - HEADER_MM - 3.5 * ROW_MM), dpi)
    band = dark[strip_y - _px(12, dpi):strip_y + _px(12, dpi)]
    assert band[:, _px(250, dpi):_px(259, dpi)].any()


def test_plot_missing_leads_and_100hz(tmp_path, shared_data):
    sig, f = wfdb.rdsamp(str(shared_data / "ptbxl" / "raw" / "00001_lr"))
    rec = Record(signal=sig.T[:6], fs=100.0, leads=tuple(f["sig_name"][:6]), record_id="00001_lr")
    out = plot_ecg(rec, tmp_path / "limb.png", dpi=80)
    assert Image.open(out).size == paper_size_px(80)


def test_plot_rejects_non_voltage_units(tmp_path, ludb1):
    import dataclasses

    with pytest.raises(ValueError, match="units"):
        plot_ecg(dataclasses.replace(ludb1, units="normalized"), tmp_path / "x.png")
