"""MLflow pyfunc model, logged as models-from-code: this file is copied into the model and executed when the
model is loaded (`mlflow.pyfunc.load_model`). The weights and detector.json come in as the artifact
`detector`; the `pipeline` package comes along as code.

Input: a DataFrame with an `image_path` column (files are read with the detector's preprocessing); a
conditional detector (model=cvae) needs a `category` column as well. The type hints and the signature it is
logged with (tracking/runs.py) say so: MLflow checks the input against it and shows it on the model's page.
Output: a DataFrame with score, p_value, is_anomaly, threshold and every base score, from the detector itself.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from pipeline.data.images import read_image, to_model_tensor
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.scoring import scores as S


class DetectorPyfunc(PythonModel):
    def load_context(self, context):
        self.detector = AnomalyDetector.load(context.artifacts["detector"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        detector = self.detector
        images = torch.stack([to_model_tensor(read_image(p, detector.spec.read_options), detector.spec.image_size)
                              for p in model_input["image_path"]])  # (N, C, S, S)
        labels = _labels(detector, model_input)
        out = detector.score(images, labels, keep=())
        scores = out[detector.spec.score].astype(np.float64)
        numpy_labels = None if labels is None else labels.numpy()
        frame = pd.DataFrame({"score": scores, "p_value": C.p_values(detector.spec, scores, numpy_labels),
                              "threshold": C.image_thresholds(detector.spec, numpy_labels, len(scores)),
                              "is_anomaly": C.decide(detector.spec, scores, numpy_labels)[0]})
        for name in (S.FUSED, *S.BASE_SCORES, *S.LEVEL_SCORES):
            if name in out:
                frame[name] = out[name]
        return frame


def _labels(detector: AnomalyDetector, model_input: pd.DataFrame) -> torch.Tensor | None:
    """Each image's category label (conditional detectors, from a `category` column); None otherwise."""
    if not detector.spec.categories:
        return None
    if "category" not in model_input or model_input["category"].isna().any():
        raise ValueError(f"a conditional detector needs a `category` column (one of {detector.spec.categories})")
    unknown = sorted(set(model_input["category"]) - set(detector.spec.categories))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; the detector knows {detector.spec.categories}")
    return torch.tensor([detector.spec.categories.index(c) for c in model_input["category"]])


mlflow.models.set_model(DetectorPyfunc())
