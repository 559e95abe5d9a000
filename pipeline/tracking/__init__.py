"""Tracking: the only subpackage that imports mlflow (runs, artifacts, registry, model packaging)."""
