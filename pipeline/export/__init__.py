"""Exports of a trained detector to other runtimes (ONNX)."""
