"""Scoring: per-sample scores, per-pixel maps, thresholds and metrics as pure functions, and the
detector that bundles a trained network with its preprocessing and calibrated threshold."""
