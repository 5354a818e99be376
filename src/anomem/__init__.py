"""AnoMem: image anomaly detection with multi-scale contrasted memory."""

__version__ = "0.1.0"
