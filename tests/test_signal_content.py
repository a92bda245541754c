"""signal.content: a signal without physiological content (flat, saturated, absurd amplitude) is
refused before a model reports on it; real records pass; one bad lead among good ones is flagged,
not refused."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch._paths import REPO_ROOT
from ecgbatch.io import read_record
from ecgbatch.io.errors import NoPhysiologicalContentError
from ecgbatch.io.record import STANDARD_LEADS, Record
from ecgbatch.signal.content import NO_CONTENT, physiological_flags, require_physiological

LEADS = list(STANDARD_LEADS)


@pytest.fixture(scope="module")
def real():
    return read_record(str(REPO_ROOT / "sample_archive" / "cinc2021" / "A0689.hea"))


def _rec(x, units="mV"):
    return Record(np.asarray(x, np.float32), 500.0, tuple(LEADS), units, "r")


def test_real_records_carry_content(real):
    assert NO_CONTENT not in physiological_flags(real.signal, real.leads, real.units)
    require_physiological(real)


@pytest.mark.parametrize("make, flag", [
    (lambda x: np.zeros_like(x), "flat"),
    (lambda x: np.full_like(x, 3e38), "flat"),                       # the 3e38 mV line
    (lambda x: np.where(np.arange(x.shape[1]) % 2, 3e38, -3e38).astype(np.float32) + 0 * x, "absurd_amplitude"),
    (lambda x: x * 1000, "absurd_amplitude"),                         # uV data labelled mV
    (lambda x: np.clip(x * 50, -1, 1), "saturated"),                  # a railed front end
    (lambda x: np.full_like(x, np.nan), "all_nan"),
])
def test_garbage_is_refused(real, make, flag):
    rec = _rec(make(real.signal.copy()))
    flags = physiological_flags(rec.signal, rec.leads, rec.units)
    assert NO_CONTENT in flags and any(f.startswith(flag + ":") for f in flags), flags
    with pytest.raises(NoPhysiologicalContentError) as e:
        require_physiological(rec)
    assert e.value.kind == "no_physiological_content"


def test_one_lead_off_is_flagged_not_refused(real):
    x = real.signal.copy()
    x[3] = 0.0
    flags = require_physiological(_rec(x))
    assert flags == ["flat:aVR"]


def test_units_are_respected(real):
    # the same ECG in uV is an ECG; in an array without voltage units only 'exactly flat' counts
    assert NO_CONTENT not in physiological_flags(real.signal * 1000, real.leads, "uV")
    assert NO_CONTENT not in physiological_flags(real.signal * 1000, real.leads, "normalized")
    assert NO_CONTENT in physiological_flags(np.zeros((12, 100)), real.leads, "normalized")


def test_report_input_marks_and_refuses_a_record_without_content(sample_archive):
    """`report --input`: the read stage puts the flags in the row's ``quality`` column, the
    generate stage writes the row as a failure (no_physiological_content) and never reaches the
    engine for it (no engine exists here: the row is decided before any prompt is built)."""
    from ecgbatch.io.scanner import list_records
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig
    from ecgbatch.pipelines import read_stage, sources as src
    from ecgbatch.pipelines.read_stage import LABEL_SEP
    from ecgbatch.pipelines.report import ReportUDF

    by_key = {s.key: s for s in list_records(str(sample_archive))}
    keys = [next(k for k in sorted(by_key) if k.endswith("bad/flat_nan_absurd.hea"))]
    batch = {"block": np.array(["b1"], dtype=object),
             "sources": np.array([[src.source_to_json(by_key[k]) for k in keys]], dtype=object),
             "ids": np.array([["bad/flat_nan_absurd"]], dtype=object)}
    cfg = EcgLlavaConfig().preprocess_config         # what `report --input` reads with
    out = read_stage.read_and_preprocess(batch, preprocess=cfg.to_dict(), measure=False)
    assert out["ok"][0] and NO_CONTENT in out["quality"][0].split(LABEL_SEP)
    udf = ReportUDF.__new__(ReportUDF)
    udf.question, udf.max_tokens, udf.lora = "Please describe this ECG.", 2, None
    udf.grounded, udf.labeller, udf.wording = True, None, 1   # grounded: the question gets no grounds to state
    udf._prompt_ids = None                           # no prompt is built for it (a call would fail)
    res = udf.report_batch(dict(out))                # one batch, as the actor's __call__ runs it in a thread
    assert not res["ok"][0] and res["error_kind"][0] == NO_CONTENT and res["report"][0] == ""
    assert res["findings"][0] == "[]" and res["question"][0] == "Please describe this ECG."
    assert "no physiological content" in res["message"][0]
