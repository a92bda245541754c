"""Signal preprocessing (PreprocessConfig, preprocess) and waveform measurements.

Light at import time: numpy/scipy only; NeuroKit2 and matplotlib load inside the functions that
need them."""
from ecgbatch.signal.axis import axis_category
from ecgbatch.signal.config import ECGCHAT, PreprocessConfig
from ecgbatch.signal.measure import ecgchat_wave_text, measure
from ecgbatch.signal.measurements import Measurements
from ecgbatch.signal.preprocess import Preprocessed, lead_key, preprocess, preprocess_batch
from ecgbatch.signal.rate import rate_category, rr_regularity

__all__ = ["ECGCHAT", "Measurements", "PreprocessConfig", "Preprocessed", "axis_category",
           "ecgchat_wave_text", "lead_key", "measure", "preprocess", "preprocess_batch", "rate_category",
           "rr_regularity"]
