"""Signal preprocessing (PreprocessConfig, preprocess) and waveform measurements."""
from ecgbatch.signal.config import ECGCHAT, PreprocessConfig

__all__ = ["ECGCHAT", "PreprocessConfig"]
