"""MLflow pyfunc model, logged as models-from-code: this file is copied into the model and executed
when the model is loaded (`mlflow.pyfunc.load_model`). The weights and detector.json come in as the
artifact `detector`; the `pipeline` package comes along as code.

Input: a DataFrame with an `image_path` column (files are read with the detector's preprocessing),
or an array (N, C, S, S) of preprocessed images in [0, 1]. A conditional detector (model=cvae) needs
a DataFrame with a `category` column as well.
Output: a DataFrame with score, p_value, is_anomaly, threshold and every individual score.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class DetectorPyfunc(PythonModel):
    def load_context(self, context):
        from pipeline.scoring.detector import AnomalyDetector

        self.detector = AnomalyDetector.load(context.artifacts["detector"])

    def predict(self, context, model_input, params=None):
        import torch

        from pipeline.data.images import read_image, to_model_tensor

        detector = self.detector
        if isinstance(model_input, pd.DataFrame):
            paths = model_input["image_path"].tolist()
            arrays = [read_image(p, detector.spec.read_options) for p in paths]
            images = torch.stack([to_model_tensor(a, detector.spec.image_size) for a in arrays])
        else:
            images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        out = _score(detector, images, model_input)
        scores = out["score"].cpu().numpy().astype(np.float64)
        frame = pd.DataFrame({
            "score": scores,
            "p_value": detector.p_values(scores),
            "threshold": detector.threshold_,
            "is_anomaly": (scores > detector.threshold_).astype(int),
        })
        from pipeline.scoring.scores import SCORE_NAMES

        for name in SCORE_NAMES:
            frame[name] = out[name].cpu().numpy()
        return frame


def _score(detector, images, model_input):
    """detector.score_batch, under each image's category for a conditional detector (column `category`)."""
    if not detector.spec.categories:
        return detector.score_batch(images)
    import torch

    from pipeline.models.cvae import conditioned

    if not isinstance(model_input, pd.DataFrame) or "category" not in model_input:
        raise ValueError(f"a conditional detector needs a `category` column (one of {detector.spec.categories})")
    unknown = sorted(set(model_input["category"]) - set(detector.spec.categories))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; the detector knows {detector.spec.categories}")
    labels = torch.tensor([detector.spec.categories.index(c) for c in model_input["category"]])
    with conditioned(detector.net, labels):
        return detector.score_batch(images)


mlflow.models.set_model(DetectorPyfunc())
