"""ecgbatch.signal.voltage.rescaled_per_lead: a record whose leads were rescaled one by one to
the same size (every lead the same peak to peak) has neither LVH voltages nor an axis, whatever
its units say. On the real data: ../shared's LUDB copy (every lead spans 1.000 mV) is such a
record, the Challenge and PTB-XL records in mV are not."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ecgbatch.io import read_record
from ecgbatch.signal import measure
from ecgbatch.signal.voltage import MIN_LEADS_FOR_RESCALE_CHECK, rescaled_per_lead

pytest.importorskip("neurokit2")


def _records(folder, pattern: str):
    return [read_record(p) for p in sorted(folder.glob(pattern))]


def test_every_shared_ludb_record_was_rescaled_per_lead(shared_data):
    recs = _records(shared_data / "ludb" / "data", "*.hea")
    assert len(recs) == 100 and all(r.units == "mV" for r in recs)
    assert [r.record_id for r in recs if not rescaled_per_lead(r.signal, r.leads)] == []


def test_challenge_records_in_mv_are_not(shared_data):
    recs = _records(shared_data / "cinc2021", "*.hea")
    assert len(recs) == 127
    assert [r.record_id for r in recs if rescaled_per_lead(r.signal, r.leads)] == []


def test_ptbxl2k_records_in_mv_are_not(shared_data):
    """All 1,732 ptbxl2k records (PTB-XL's own 100 Hz WFDB release, mV; about 4 s)."""
    recs = _records(shared_data / "ptbxl2k" / "records100", "*/*.hea")
    assert len(recs) == 1732
    assert [r.record_id for r in recs if rescaled_per_lead(r.signal, r.leads)] == []


@pytest.mark.parametrize("method", ["multilead", "ecgchat"])
def test_a_record_rescaled_lead_by_lead_loses_its_axis_and_voltages_not_its_rate(shared_data, method):
    """PTB-XL 2 (sinus bradycardia, mV) with each lead divided by its own peak to peak: still
    "mV" by its units, but no axis and no voltage is stated; the rate and RR regularity stay."""
    rec = read_record(shared_data / "ptbxl2k" / "records100" / "00000" / "00002_lr.hea")
    assert rec.units == "mV" and not rescaled_per_lead(rec.signal)
    pp = rec.signal.max(axis=1, keepdims=True) - rec.signal.min(axis=1, keepdims=True)
    scaled = dataclasses.replace(rec, signal=rec.signal / pp)
    assert rescaled_per_lead(scaled.signal)
    base, m = measure(rec, method=method), measure(scaled, method=method)
    assert math.isfinite(base.axis_deg) and math.isfinite(base.sokolow_lyon_mv) and math.isfinite(base.cornell_mv)
    assert math.isnan(m.axis_deg) and m.axis_category is None
    assert math.isnan(m.sokolow_lyon_mv) and math.isnan(m.cornell_mv) and m.lvh_voltage is None
    assert m.hr_bpm == base.hr_bpm and m.rr_nrmssd == base.rr_nrmssd and m.rr_irregular is False


def test_fewer_than_six_leads_with_a_signal_are_not_judged(shared_data):
    rec = read_record(shared_data / "ptbxl2k" / "records100" / "00000" / "00002_lr.hea")
    pp = rec.signal.max(axis=1, keepdims=True) - rec.signal.min(axis=1, keepdims=True)
    same = rec.signal / pp                                  # 12 leads of equal peak to peak
    n = MIN_LEADS_FOR_RESCALE_CHECK
    assert rescaled_per_lead(same) and rescaled_per_lead(same[:n])
    assert not rescaled_per_lead(same[: n - 1])            # too few leads
    flat = same.copy()
    flat[n - 1:] = 0.0                                      # 5 leads with a signal, 7 flat
    assert not rescaled_per_lead(flat)
    flat[n - 1:] = np.nan
    assert not rescaled_per_lead(flat)
    assert not rescaled_per_lead(same[0])                   # one lead, not [leads, samples]
    # named: III, aVR, aVL, aVF (computed from I and II) are not counted, so the six limb leads
    # alone are too few
    assert rec.leads[:6] == ("I", "II", "III", "aVR", "aVL", "aVF")
    assert rescaled_per_lead(same[:6]) and not rescaled_per_lead(same[:6], rec.leads[:6])
    with pytest.raises(ValueError, match="lead names"):
        rescaled_per_lead(same, rec.leads[:6])


def test_limb_leads_derived_after_the_rescaling_do_not_hide_it(sample_archive):
    """The sample's GE MUSE file of LUDB 1 stores I, II, V1-V6 (each 1.000 mV peak to peak, as
    ../shared's copy) and computes III, aVR, aVL, aVF from I and II, which then differ: the eight
    stored leads still show the rescaling, and nothing is stated from them; the MUSE file of a
    Challenge record in mV keeps its axis."""
    rec = read_record(sample_archive / "xml" / "ludb_1_muse.xml")
    assert not rescaled_per_lead(rec.signal) and rescaled_per_lead(rec.signal, rec.leads)
    m = measure(rec, method="multilead")
    assert math.isnan(m.axis_deg) and math.isnan(m.sokolow_lyon_mv) and math.isfinite(m.hr_bpm)
    mv = read_record(sample_archive / "xml" / "cinc2021_A0689_muse.xml")
    assert not rescaled_per_lead(mv.signal, mv.leads)
    assert math.isfinite(measure(mv, method="multilead").axis_deg)
