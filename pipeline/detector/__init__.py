"""The detector: fit / score / predict over images, the VAE and the learned anomaly map inside, saved whole."""

from pipeline.detector.detector import AnomalyDetector, TamperedModelError, file_sha256, verify_weights

__all__ = ["AnomalyDetector", "TamperedModelError", "file_sha256", "verify_weights"]
