"""GE MUSE XML and HL7 aECG readers: round trips from real records (LUDB, PhysioNet/CinC 2021),
a hand-written MUSE file and a hand-written aECG file that our writers did not produce, identifier
hygiene, typed errors for malformed input, and refusal of entity-expansion documents."""
from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest

from ecgbatch.io.errors import (
    EcgReadError, EmptyFileError, HeaderError, LengthMismatchError, NotAnEcgError,
    TruncatedSignalError, UnknownLeadError, UnsafeXmlError,
)
from ecgbatch.io.hl7aecg import read_hl7_aecg, write_hl7_aecg
from ecgbatch.io.muse import MUSE_STORED_LEADS, read_muse, write_muse
from ecgbatch.io.record import STANDARD_LEADS

wfdb = pytest.importorskip("wfdb")

MUSE_LSB_MV = 4.88e-3
EPS = 1e-5  # float32 storage of values of a few mV
IDENTIFIERS = {"patient_id": "MRN-7741-QZ", "patient_last_name": "Kowalczyk",
               "patient_first_name": "Henrietta", "patient_name": "Kowalczyk^Henrietta",
               "birth_date": "1944-03-02"}
BIRTH_STRINGS = ("1944-03-02", "19440302", "03-02-1944")


# ---- real records ----------------------------------------------------------------------------

def ludb(shared_data: Path, n: int):
    """LUDB record -> (signal [12, N] mV, fs, lead names, meta from the header comments)."""
    sig, f = wfdb.rdsamp(str(shared_data / "ludb" / "data" / str(n)))
    meta, stmts = {}, []
    for c in f["comments"]:
        if c.startswith("<age>:"):
            meta["age"] = int(c.split(":", 1)[1])
        elif c.startswith("<sex>:"):
            meta["sex"] = c.split(":", 1)[1].strip()
        elif not c.startswith("<"):
            stmts.append(c.strip())
    meta["diagnoses"] = stmts
    return sig.T, float(f["fs"]), list(f["sig_name"]), meta


def challenge(shared_data: Path, name: str):
    """Challenge 2021 record -> (signal, fs, leads, meta); date/time from the header's record line
    (wfdb misreads the 'DD-Mon-YYYY' form), Dx codes named through dx_mapping_*.csv."""
    d = shared_data / "cinc2021"
    sig, f = wfdb.rdsamp(str(d / name))
    first = (d / f"{name}.hea").read_text().splitlines()[0].split()
    meta: dict = {}
    if len(first) >= 6:
        when = dt.datetime.strptime(f"{first[4]} {first[5]}", "%d-%b-%Y %H:%M:%S")
        meta["acquired"] = when.isoformat()
    names = {}
    for csv in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        for line in (d / csv).read_text().splitlines()[1:]:
            cells = line.split(",")
            names[cells[1]] = cells[0]
    for c in f["comments"]:
        key, _, val = c.partition(":")
        if key == "Age" and val.strip().isdigit():
            meta["age"] = int(val)
        elif key == "Sex":
            meta["sex"] = val.strip()[:1].upper()
        elif key == "Dx":
            meta["diagnoses"] = [names.get(code.strip(), code.strip()) for code in val.split(",")]
    return sig.T, float(f["fs"]), list(f["sig_name"]), meta


def rows(sig, leads, wanted):
    idx = [[l.upper() for l in leads].index(w.upper()) for w in wanted]
    return sig[idx]


def all_text(record) -> str:
    return repr(record) + repr(record.meta) + str(record.meta) + record.record_id + record.source


# ---- MUSE round trips ------------------------------------------------------------------------

def test_muse_round_trip_ludb(shared_data, tmp_path):
    sig, fs, leads, meta = ludb(shared_data, 1)
    f = write_muse(tmp_path / "ludb1.xml", sig, fs, leads, meta)
    rec = read_muse(f)
    assert rec.signal.dtype == np.float32 and rec.signal.shape == (12, sig.shape[1])
    assert rec.leads == STANDARD_LEADS and rec.fs == fs and rec.units == "mV"
    err = np.abs(rec.signal[[rec.leads.index(n) for n in MUSE_STORED_LEADS]]
                 - rows(sig, leads, MUSE_STORED_LEADS))
    assert err.max() <= MUSE_LSB_MV / 2 + EPS, err.max()
    assert err.max() > 1e-4  # really quantised at 4.88 uV, not passed through
    assert rec.meta["stored_leads"] == list(MUSE_STORED_LEADS)
    assert rec.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    assert rec.meta["age"] == meta["age"] and rec.meta["sex"] == meta["sex"]
    assert rec.meta["diagnoses"] == meta["diagnoses"]
    # Einthoven/Goldberger hold exactly on what was read (LUDB's own stored III/aV* are not
    # exactly II-I etc.: up to 0.36 mV apart in record 1, so they are not the reference here)
    i, ii = rec.lead("I").astype(np.float64), rec.lead("II").astype(np.float64)
    for name, want in (("III", ii - i), ("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
        assert np.abs(rec.lead(name) - want).max() <= EPS, name


def test_muse_derived_leads_match_challenge_originals(shared_data, tmp_path):
    # A Challenge record whose stored limb leads obey Einthoven/Goldberger to the source's 1 uV
    # quantisation, so derived leads can be checked against the originals.
    sig, fs, leads, meta = challenge(shared_data, "A0689")
    rec = read_muse(write_muse(tmp_path / "a.xml", sig, fs, leads, meta))
    # |derived - original| <= (quantisation of I and II: <= 1 LSB) + (source rounding: 1.5 uV)
    tol = MUSE_LSB_MV + 1.5e-3 + EPS
    for name in ("III", "aVR", "aVL", "aVF"):
        err = np.abs(rec.lead(name) - rows(sig, leads, [name])[0]).max()
        assert err <= tol, (name, err)
    assert rec.meta["acquired"] == meta["acquired"]
    assert rec.meta["diagnoses"] == ["atrial fibrillation"]


def test_muse_all_leads_and_median_option(shared_data, tmp_path):
    sig, fs, leads, meta = ludb(shared_data, 3)
    beat = sig[:, 1000:1600]  # a real 1.2 s segment stored as the Median waveform
    f = write_muse(tmp_path / "m.xml", sig, fs, leads, meta, store_all_leads=True, median_mV=beat)
    rhythm, median = read_muse(f), read_muse(f, waveform="median")
    assert "derived_leads" not in rhythm.meta and rhythm.meta["waveform_type"] == "Rhythm"
    assert np.abs(rhythm.signal - rows(sig, leads, STANDARD_LEADS)).max() <= MUSE_LSB_MV / 2 + EPS
    assert median.meta["waveform_type"] == "Median" and median.n_samples == 600
    assert np.abs(median.signal - rows(beat, leads, STANDARD_LEADS)).max() <= MUSE_LSB_MV / 2 + EPS
    with pytest.raises(NotAnEcgError, match="median"):
        read_muse(write_muse(tmp_path / "r.xml", sig, fs, leads), waveform="median")
    with pytest.raises(ValueError, match="waveform"):
        read_muse(f, waveform="beat")


# ---- HL7 aECG round trips --------------------------------------------------------------------

def test_hl7_round_trip_ludb_microvolts(shared_data, tmp_path):
    sig, fs, leads, meta = ludb(shared_data, 1)
    beat = sig[:, 2000:2600]
    f = write_hl7_aecg(tmp_path / "h.xml", sig, fs, leads, meta, unit="uV", scale=1.0, median_mV=beat)
    rec = read_hl7_aecg(f)
    assert rec.leads == STANDARD_LEADS and rec.fs == fs and rec.signal.dtype == np.float32
    err = np.abs(rec.signal - rows(sig, leads, STANDARD_LEADS))
    assert err.max() <= 0.5e-3 + EPS, err.max()  # half of the 1 uV scale
    assert rec.meta["series_code"] == "RHYTHM" and "derived_leads" not in rec.meta
    assert rec.meta["sex"] == meta["sex"]
    assert rec.meta["diagnoses"] == meta["diagnoses"]
    assert "acquired" not in rec.meta and "age" not in rec.meta  # TIME_RELATIVE: no date
    med = read_hl7_aecg(f, waveform="median")
    assert med.meta["series_code"] == "REPRESENTATIVE_BEAT" and med.n_samples == 600
    assert np.abs(med.signal - rows(beat, leads, STANDARD_LEADS)).max() <= 0.5e-3 + EPS


def test_hl7_millivolt_units_with_origin(shared_data, tmp_path):
    sig, fs, leads, meta = challenge(shared_data, "HR03961")
    f = write_hl7_aecg(tmp_path / "mv.xml", sig, fs, leads, meta, unit="mV", scale=0.0025, origin=0.1)
    assert 'unit="mV"' in f.read_text() and "TIME_ABSOLUTE" in f.read_text()
    rec = read_hl7_aecg(f)
    err = np.abs(rec.signal - rows(sig, leads, STANDARD_LEADS))
    assert 1e-4 < err.max() <= 0.0025 / 2 + EPS, err.max()
    assert rec.meta["age"] == meta["age"] == 9  # from the year-precision birthTime
    assert rec.meta["acquired"] == meta["acquired"]
    assert rec.meta["sex"] == "F"


def test_hl7_eight_lead_file_gets_derived_leads(shared_data, tmp_path):
    sig, fs, leads, meta = challenge(shared_data, "A0689")
    eight = rows(sig, leads, MUSE_STORED_LEADS)
    rec = read_hl7_aecg(write_hl7_aecg(tmp_path / "e.xml", eight, fs, MUSE_STORED_LEADS, meta))
    assert rec.leads == STANDARD_LEADS and rec.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    for name in ("III", "aVR", "aVL", "aVF"):
        assert np.abs(rec.lead(name) - rows(sig, leads, [name])[0]).max() <= 1e-3 + 1.5e-3 + EPS


# ---- identifiers never reach the Record -------------------------------------------------------

@pytest.mark.parametrize("fmt", ["muse", "hl7"])
def test_identifiers_are_not_copied(shared_data, tmp_path, fmt):
    sig, fs, leads, meta = challenge(shared_data, "A0689")
    meta = {**meta, **IDENTIFIERS}
    if fmt == "muse":
        f, rec_of = write_muse(tmp_path / "id.xml", sig, fs, leads, meta), read_muse
    else:
        f, rec_of = write_hl7_aecg(tmp_path / "id.xml", sig, fs, leads, meta), read_hl7_aecg
    raw = f.read_text(encoding="latin-1")
    assert IDENTIFIERS["patient_id"] in raw and "Kowalczyk" in raw  # the file really has them
    rec = rec_of(f)
    blob = all_text(rec)
    for secret in ("MRN-7741-QZ", "Kowalczyk", "Henrietta", *BIRTH_STRINGS):
        assert secret not in blob, secret
    if fmt == "hl7":  # full birth date 1944-03-02, acquisition 2020-05-12 -> 76
        acq = dt.datetime.fromisoformat(meta["acquired"])
        assert rec.meta["age"] == acq.year - 1944 - ((acq.month, acq.day) < (3, 2))
    else:
        assert rec.meta["age"] == meta["age"]


# ---- files our writers did not produce --------------------------------------------------------

def _b64(counts) -> str:
    return base64.b64encode(np.asarray(counts, dtype="<i2").tobytes()).decode()


I_COUNTS, II_COUNTS, V1_COUNTS = [0, 205, 410, -205, 12, -7], [100, 50, -3000, 32767, -32768, 1], [1, 2, 3, 4, 5, 6]
# Element order as in the MUSE DTD but shuffled inside LeadData, extra elements, lowercase unit
# name, SampleBase x 10^SampleExponent, base64 broken over lines, statement fragments joined up to
# ENDSLINE, ISO-8859-1 text, a Median waveform before the Rhythm one.
HAND_MUSE = f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG>
  <MuseInfo><MuseVersion>8.0.2.10132</MuseVersion></MuseInfo>
  <PatientDemographics>
    <PatientID>HX-0042</PatientID><PatientAge>18</PatientAge><AgeUnits>MONTHS</AgeUnits>
    <DateofBirth>01-31-2019</DateofBirth><Gender>MALE</Gender><Race>UNKNOWN</Race>
    <PatientLastName>Müller</PatientLastName><PatientFirstName>Zoë</PatientFirstName>
  </PatientDemographics>
  <TestDemographics>
    <DataType>RESTING</DataType><Site>7</Site><AcquisitionDevice>MAC55</AcquisitionDevice>
    <AcquisitionTime>08:27:44</AcquisitionTime><AcquisitionDate>07-31-2020</AcquisitionDate>
    <AcquisitionTechLastName>Tech</AcquisitionTechLastName>
  </TestDemographics>
  <RestingECGMeasurements><VentricularRate>72</VentricularRate><QRSDuration>88</QRSDuration>
    <QTCorrected>421</QTCorrected></RestingECGMeasurements>
  <Diagnosis>
    <Modality>RESTING</Modality>
    <DiagnosisStatement><StmtFlag>USERINSERT</StmtFlag><StmtText>Sinus rhythm</StmtText></DiagnosisStatement>
    <DiagnosisStatement><StmtText>with 1st degree A-V block</StmtText><StmtFlag>ENDSLINE</StmtFlag></DiagnosisStatement>
    <DiagnosisStatement><StmtFlag>ENDSLINE</StmtFlag><StmtText>Abnormal ECG (réf. 2)</StmtText></DiagnosisStatement>
  </Diagnosis>
  <QRSTimesTypes><QRS><Number>1</Number><Type>0</Type><Time>412</Time></QRS></QRSTimesTypes>
  <Waveform>
    <WaveformType>Median</WaveformType><SampleBase>50</SampleBase><SampleExponent>1</SampleExponent>
    <LeadData><LeadID>I</LeadID><LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
      <LeadAmplitudeUnits>microvolts</LeadAmplitudeUnits><LeadSampleCountTotal>2</LeadSampleCountTotal>
      <WaveFormData>{_b64([1, 2])}</WaveFormData></LeadData>
  </Waveform>
  <Waveform>
    <WaveformType>Rhythm</WaveformType>
    <WaveformStartTime>0</WaveformStartTime>
    <NumberofLeads>3</NumberofLeads>
    <SampleType>CONTINUOUS_SAMPLES</SampleType>
    <SampleExponent>1</SampleExponent>
    <SampleBase>25</SampleBase>
    <HighPassFilter>16</HighPassFilter>
    <LeadData>
      <WaveFormData>{_b64(II_COUNTS)[:8]}
{_b64(II_COUNTS)[8:]}</WaveFormData>
      <LeadID>II</LeadID>
      <LeadSampleCountTotal>6</LeadSampleCountTotal>
      <LeadAmplitudeUnits>microvolts</LeadAmplitudeUnits>
      <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
      <LeadDataCRC32>12345</LeadDataCRC32>
    </LeadData>
    <LeadData>
      <LeadByteCountTotal>12</LeadByteCountTotal><LeadSampleSize>2</LeadSampleSize>
      <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit><LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
      <LeadID>I</LeadID><WaveFormData>{_b64(I_COUNTS)}</WaveFormData>
    </LeadData>
    <LeadData>
      <LeadID>V1</LeadID><LeadSampleCountTotal>6</LeadSampleCountTotal>
      <LeadAmplitudeUnitsPerBit>0.01</LeadAmplitudeUnitsPerBit><LeadAmplitudeUnits>MILLIVOLTS</LeadAmplitudeUnits>
      <WaveFormData>{_b64(V1_COUNTS)}</WaveFormData>
    </LeadData>
  </Waveform>
</RestingECG>
"""


def test_hand_written_muse_file(tmp_path):
    f = tmp_path / "hand.xml"
    f.write_bytes(HAND_MUSE.encode("iso-8859-1"))
    rec = read_muse(f)
    assert rec.fs == 250.0
    assert rec.leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1")
    i = np.array(I_COUNTS) * MUSE_LSB_MV
    ii = np.array(II_COUNTS) * MUSE_LSB_MV
    np.testing.assert_allclose(rec.lead("I"), i, atol=EPS)
    np.testing.assert_allclose(rec.lead("II"), ii, rtol=1e-6, atol=EPS)
    np.testing.assert_allclose(rec.lead("V1"), np.array(V1_COUNTS) * 0.01, atol=EPS)
    np.testing.assert_allclose(rec.lead("aVF"), ii - i / 2, rtol=1e-6, atol=EPS)
    assert rec.meta["stored_leads"] == ["II", "I", "V1"]
    assert rec.meta["age"] == 1.5 and rec.meta["sex"] == "M"
    assert rec.meta["acquired"] == "2020-07-31T08:27:44" and rec.meta["acquisition_device"] == "MAC55"
    assert rec.meta["diagnoses"] == ["Sinus rhythm with 1st degree A-V block", "Abnormal ECG (réf. 2)"]
    assert rec.meta["measurements"] == {"ventricular_rate_bpm": 72.0, "qrs_ms": 88.0, "qtc_ms": 421.0}
    for secret in ("HX-0042", "Müller", "Zoë", "2019", "Tech", "UNKNOWN"):
        assert secret not in all_text(rec), secret
    med = read_muse(f, waveform="Median")
    assert med.fs == 500.0 and med.leads == ("I",) and med.n_samples == 2


HAND_AECG = """<?xml version="1.0" encoding="UTF-8"?>
<hl7:AnnotatedECG xmlns:hl7="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <hl7:id root="2.16.840.1.113883.3.1"/>
  <hl7:effectiveTime><hl7:low value="20021122091000.000-0500"/></hl7:effectiveTime>
  <hl7:componentOf><hl7:timepointEvent><hl7:componentOf><hl7:subjectAssignment><hl7:subject>
    <hl7:trialSubject><hl7:id extension="SUBJ-99"/>
      <hl7:subjectDemographicPerson><hl7:name>J. Doe</hl7:name>
        <hl7:administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
        <hl7:birthTime value="19521123"/></hl7:subjectDemographicPerson>
    </hl7:trialSubject></hl7:subject></hl7:subjectAssignment></hl7:componentOf></hl7:timepointEvent>
  </hl7:componentOf>
  <hl7:component><hl7:series>
    <hl7:code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
    <hl7:component><hl7:sequenceSet>
      <hl7:component><hl7:sequence><hl7:code code="MDC_ECG_LEAD_AVR"/>
        <hl7:value xsi:type="SLIST_PQ"><hl7:origin value="-10" unit="uV"/><hl7:scale value="2.5" unit="uV"/>
          <hl7:digits>4 -4
            400 0</hl7:digits></hl7:value></hl7:sequence></hl7:component>
      <hl7:component><hl7:sequence><hl7:code code="TIME_RELATIVE"/>
        <hl7:value xsi:type="GLIST_PQ"><hl7:head value="0" unit="ms"/><hl7:increment value="4" unit="ms"/></hl7:value>
      </hl7:sequence></hl7:component>
      <hl7:component><hl7:sequence><hl7:code code="MDC_ECG_LEAD_V7"/>
        <hl7:value xsi:type="SLIST_PQ"><hl7:origin value="0" unit="V"/><hl7:scale value="0.000001" unit="V"/>
          <hl7:digits>1 2 3 4</hl7:digits></hl7:value></hl7:sequence></hl7:component>
    </hl7:sequenceSet></hl7:component>
    <hl7:subjectOf><hl7:annotationSet><hl7:component><hl7:annotation>
      <hl7:code code="MDC_ECG_INTERPRETATION"/>
      <hl7:component><hl7:annotation><hl7:code code="MDC_ECG_INTERPRETATION_STATEMENT"/>
        <hl7:value xsi:type="ST">Sinus rhythm</hl7:value></hl7:annotation></hl7:component>
      <hl7:component><hl7:annotation><hl7:code code="MDC_ECG_INTERPRETATION_SUMMARY"/>
        <hl7:value xsi:type="ST">Normal ECG</hl7:value></hl7:annotation></hl7:component>
    </hl7:annotation></hl7:component></hl7:annotationSet></hl7:subjectOf>
  </hl7:series></hl7:component>
</hl7:AnnotatedECG>
"""


def test_hand_written_aecg_file(tmp_path):
    f = tmp_path / "hand_aecg.xml"
    f.write_text(HAND_AECG)
    rec = read_hl7_aecg(f)
    assert rec.fs == 250.0 and rec.leads == ("aVR", "V7")
    np.testing.assert_allclose(rec.lead("aVR"), (-10 + 2.5 * np.array([4, -4, 400, 0])) * 1e-3, atol=EPS)
    np.testing.assert_allclose(rec.lead("V7"), np.array([1, 2, 3, 4]) * 1e-3, atol=EPS)
    assert rec.meta["nonstandard_leads"] == ["V7"] and "derived_leads" not in rec.meta
    assert rec.meta["age"] == 49 and rec.meta["sex"] == "F"  # 1952-11-23 -> 2002-11-22: one day short of 50
    assert rec.meta["acquired"] == "2002-11-22T09:10:00"
    assert rec.meta["diagnoses"] == ["Sinus rhythm"]
    assert rec.meta["interpretation_summary"] == "Normal ECG"
    for secret in ("SUBJ-99", "J. Doe", "1952"):
        assert secret not in all_text(rec), secret


# ---- typed errors -----------------------------------------------------------------------------

@pytest.fixture
def muse_file(shared_data, tmp_path):
    sig, fs, leads, meta = challenge(shared_data, "A0689")
    return write_muse(tmp_path / "ok_muse.xml", sig[:, :1000], fs, leads, meta)


@pytest.fixture
def aecg_file(shared_data, tmp_path):
    sig, fs, leads, meta = challenge(shared_data, "A0689")
    return write_hl7_aecg(tmp_path / "ok_aecg.xml", sig[:, :1000], fs, leads, meta)


def _edit(src: Path, dst: Path, fn) -> Path:
    dst.write_text(fn(src.read_text(encoding="latin-1")), encoding="latin-1")
    return dst


def _lead_block(xml: str, lead: str) -> tuple[int, int]:
    m = re.search(r"<LeadData>(?:(?!</LeadData>).)*<LeadID>" + lead + r"</LeadID>.*?</LeadData>", xml, re.S)
    return m.start(), m.end()


@pytest.mark.parametrize("reader", [read_muse, read_hl7_aecg])
def test_malformed_empty_and_foreign_xml(tmp_path, reader, muse_file, aecg_file):
    src = muse_file if reader is read_muse else aecg_file
    half = tmp_path / "half.xml"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(HeaderError, match="malformed XML") as e:
        reader(half)
    assert e.value.path == str(half)
    (tmp_path / "empty.xml").write_bytes(b"  \n")
    with pytest.raises(EmptyFileError):
        reader(tmp_path / "empty.xml")
    (tmp_path / "other.xml").write_text('<?xml version="1.0"?><svg><g/></svg>')
    with pytest.raises(NotAnEcgError, match="root element is 'svg'"):
        reader(tmp_path / "other.xml")
    with pytest.raises(EcgReadError):
        reader(tmp_path / "does_not_exist.xml")


def test_muse_missing_waveform_mismatch_and_truncation(tmp_path, muse_file):
    no_wave = _edit(muse_file, tmp_path / "nw.xml", lambda s: re.sub(r"<Waveform>.*</Waveform>", "", s, flags=re.S))
    with pytest.raises(NotAnEcgError, match="Rhythm|rhythm"):
        read_muse(no_wave)

    def shorten_v6(s):
        a, b = _lead_block(s, "V6")
        block = s[a:b]
        data = re.search(r"<WaveFormData>(.*?)</WaveFormData>", block, re.S).group(1)
        short = base64.b64decode(data)[:1600]  # 800 of 1000 samples, header updated consistently
        block = re.sub(r"<WaveFormData>.*?</WaveFormData>", f"<WaveFormData>{base64.b64encode(short).decode()}</WaveFormData>", block, flags=re.S)
        block = block.replace("<LeadSampleCountTotal>1000<", "<LeadSampleCountTotal>800<").replace(
            "<LeadByteCountTotal>2000<", "<LeadByteCountTotal>1600<")
        return s[:a] + block + s[b:]
    with pytest.raises(LengthMismatchError, match="V6"):
        read_muse(_edit(muse_file, tmp_path / "mm.xml", shorten_v6))

    def cut_v2(s, keep):
        a, b = _lead_block(s, "V2")
        block = re.sub(r"<WaveFormData>\s*(.*?)</WaveFormData>",
                       lambda m: "<WaveFormData>" + m.group(1).replace("\n", "")[:keep] + "</WaveFormData>",
                       s[a:b], flags=re.S)
        return s[:a] + block + s[b:]
    with pytest.raises(TruncatedSignalError, match="V2"):  # broken padding
        read_muse(_edit(muse_file, tmp_path / "t1.xml", lambda s: cut_v2(s, 1001)))
    with pytest.raises(TruncatedSignalError, match="declared"):  # whole quanta, too few samples
        read_muse(_edit(muse_file, tmp_path / "t2.xml", lambda s: cut_v2(s, 1200)))
    with pytest.raises(HeaderError, match="LeadAmplitudeUnits"):
        read_muse(_edit(muse_file, tmp_path / "u.xml", lambda s: s.replace(">MICROVOLTS<", ">FURLONGS<", 1)))


def test_muse_unknown_lead_names(tmp_path, muse_file):
    rec = read_muse(_edit(muse_file, tmp_path / "v7.xml", lambda s: s.replace("<LeadID>V6<", "<LeadID>V7<")))
    assert "V7" in rec.leads and "V6" not in rec.leads and rec.meta["nonstandard_leads"] == ["V7"]
    odd = {"I": "X", "II": "Y", "V1": "Z", "V2": "CH4", "V3": "CH5", "V4": "CH6", "V5": "CH7", "V6": "CH8"}

    def rename_all(s):
        return re.sub(r"<LeadID>(\w+)</LeadID>", lambda m: f"<LeadID>{odd[m.group(1)]}</LeadID>", s)
    with pytest.raises(UnknownLeadError):
        read_muse(_edit(muse_file, tmp_path / "xyz.xml", rename_all))


def test_aecg_errors(tmp_path, aecg_file):
    with pytest.raises(NotAnEcgError, match="series"):
        read_hl7_aecg(_edit(aecg_file, tmp_path / "ns.xml",
                            lambda s: re.sub(r"<component>\s*<series>.*</series>\s*</component>", "", s, flags=re.S)))

    def add_digits(s):
        i = s.index("MDC_ECG_LEAD_V3")
        j = s.index("</digits>", i)
        return s[:j] + " 7 7 7" + s[j:]
    with pytest.raises(LengthMismatchError, match="V3"):
        read_hl7_aecg(_edit(aecg_file, tmp_path / "mm.xml", add_digits))
    with pytest.raises(HeaderError, match="unknown unit"):
        read_hl7_aecg(_edit(aecg_file, tmp_path / "u.xml", lambda s: s.replace('unit="uV"', 'unit="furlong"', 1)))
    with pytest.raises(HeaderError, match="non-number"):
        read_hl7_aecg(_edit(aecg_file, tmp_path / "d.xml", lambda s: s.replace("<digits>", "<digits>12 abc ", 1)))
    with pytest.raises(NotAnEcgError, match="median|REPRESENTATIVE_BEAT"):
        read_hl7_aecg(aecg_file, waveform="median")
    # decimals in <digits> (outside the INT type, but some producers write them) still read
    first = int(re.search(r"<digits>(-?\d+)", aecg_file.read_text()).group(1))
    dec = read_hl7_aecg(_edit(aecg_file, tmp_path / "dec.xml",
                              lambda s: re.sub(r"<digits>(-?\d+)", r"<digits>\1.25", s, count=1)))
    assert dec.lead("I")[0] == pytest.approx((first + np.sign(first or 1) * 0.25) * 1e-3, abs=EPS)
    rec = read_hl7_aecg(_edit(aecg_file, tmp_path / "v7.xml", lambda s: s.replace("MDC_ECG_LEAD_V6", "MDC_ECG_LEAD_V7")))
    assert rec.leads[-1] == "V7" and rec.meta["nonstandard_leads"] == ["V7"]

    def only_xyz(s):
        s = re.sub(r"MDC_ECG_LEAD_(I|II|III|AVR|AVL|AVF)\"", lambda m: f'MDC_ECG_LEAD_{m.group(1)}_X"', s)
        return re.sub(r"MDC_ECG_LEAD_V(\d)\"", r'MDC_ECG_LEAD_V\1R"', s)
    with pytest.raises(UnknownLeadError):
        read_hl7_aecg(_edit(aecg_file, tmp_path / "xyz.xml", only_xyz))


# ---- entity expansion / DTD tricks are refused -------------------------------------------------

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE RestingECG [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<RestingECG><PatientDemographics><PatientAge>&lol3;</PatientAge></PatientDemographics></RestingECG>
"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE AnnotatedECG [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<AnnotatedECG xmlns="urn:hl7-org:v3"><text>&xxe;</text></AnnotatedECG>
"""
EXTERNAL_ONLY = """<?xml version="1.0"?>
<!DOCTYPE RestingECG SYSTEM "file:///etc/passwd">
<RestingECG><PatientDemographics><PatientAge>&secret;</PatientAge></PatientDemographics></RestingECG>
"""


@pytest.mark.parametrize("doc,reader", [(LAUGHS, read_muse), (XXE, read_hl7_aecg), (LAUGHS, read_hl7_aecg)])
def test_entity_documents_are_refused(tmp_path, doc, reader):
    f = tmp_path / "evil.xml"
    f.write_text(doc)
    with pytest.raises(UnsafeXmlError, match="DTD subset|entity"):
        reader(f)


def test_external_doctype_is_never_loaded(tmp_path, muse_file):
    # real MUSE exports carry <!DOCTYPE RestingECG SYSTEM "restecg.dtd">: allowed, never fetched;
    # an entity that only the external DTD could define is a parse error, not a file read
    assert '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">' in muse_file.read_text(encoding="latin-1")
    f = tmp_path / "ext.xml"
    f.write_text(EXTERNAL_ONLY)
    with pytest.raises(HeaderError, match="undefined entity"):
        read_muse(f)


# ---- the bundled sample archive ---------------------------------------------------------------

SAMPLES = {  # file -> (reader, source loader, record, max abs error vs source in mV)
    "ludb_1_muse.xml": (read_muse, ludb, 1, MUSE_LSB_MV / 2),
    "cinc2021_A0689_muse.xml": (read_muse, challenge, "A0689", MUSE_LSB_MV / 2),
    "ludb_3_aecg.xml": (read_hl7_aecg, ludb, 3, 0.5e-3),
    "cinc2021_HR03961_aecg.xml": (read_hl7_aecg, challenge, "HR03961", 0.5e-3),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_archive_xml_files(sample_archive, shared_data, name):
    reader, loader, rec_name, tol = SAMPLES[name]
    rec = reader(sample_archive / "xml" / name)
    sig, fs, leads, meta = loader(shared_data, rec_name)
    stored = rec.meta["stored_leads"]
    assert rec.fs == fs and rec.n_samples == sig.shape[1]
    err = np.abs(rec.signal[[rec.leads.index(n) for n in stored]] - rows(sig, leads, stored))
    assert err.max() <= tol + EPS, err.max()
    assert rec.meta["sex"] == meta["sex"]
    assert rec.meta["diagnoses"] == meta["diagnoses"]


def write_samples(shared_data: Path, out_dir: Path) -> list[Path]:
    """Regenerate sample_archive/xml from the real records named in SAMPLES (run this file)."""
    out = []
    for name, (reader, loader, rec_name, _) in sorted(SAMPLES.items()):
        sig, fs, leads, meta = loader(shared_data, rec_name)
        writer = write_muse if reader is read_muse else write_hl7_aecg
        out.append(writer(out_dir / name, sig, fs, leads, meta))
    return out


if __name__ == "__main__":  # python tests/test_io_xml.py -> rewrites sample_archive/xml/*.xml
    from ecgbatch._paths import SAMPLE_ARCHIVE, shared_dir

    target = SAMPLE_ARCHIVE / "xml"
    target.mkdir(parents=True, exist_ok=True)
    for p in write_samples(shared_dir() / "data", target):
        print(p, p.stat().st_size)


def test_aecg_several_sequence_sets(tmp_path, aecg_file):
    # some devices split one strip into several sequenceSets: the first is read by default,
    # the count is reported, others are reachable by index
    def double(s):
        m = re.search(r"\n(\s*)<component>\s*<sequenceSet>.*?</sequenceSet>\s*</component>", s, re.S)
        second = m.group(0).replace("<digits>", "<digits>5 ").replace("</digits>", " 5</digits>")
        return s[:m.end()] + second + s[m.end():]
    f = _edit(aecg_file, tmp_path / "two.xml", double)
    a, b = read_hl7_aecg(f), read_hl7_aecg(f, sequence_set=1)
    assert a.meta["n_sequence_sets"] == 2 and a.n_samples + 2 == b.n_samples
    np.testing.assert_array_equal(a.signal, b.signal[:, 1:-1])
    with pytest.raises(ValueError, match="sequence_set"):
        read_hl7_aecg(f, sequence_set=2)
