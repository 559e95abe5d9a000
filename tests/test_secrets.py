"""No secret leaves the process: a tracking URI with a user name and password is used to connect, but
neither the password nor the user appears in any parameter, tag, metric name, artifact or log line."""

from __future__ import annotations

from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from tests.conftest import tiny_overrides
from tests.mlflow_server import mlflow_server

PASSWORD = "s3cret-Pa55word"


def test_credentials_in_the_tracking_uri_are_never_logged(tmp_path, tiny_dataset, capsys, caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with mlflow_server(tmp_path / "server") as url:
        parts = urlsplit(url)
        secret_uri = f"{parts.scheme}://alice:{PASSWORD}@{parts.netloc}"
        overrides = [o for o in tiny_overrides(tmp_path, f"data.root={tiny_dataset}",
                                               f"score.output_dir={tmp_path / 'scored'}")
                     if not o.startswith("tracking.uri=")] + [f"tracking.uri={secret_uri}"]
        assert main(["train", *overrides]) == 0
        assert main(["score", *overrides]) == 0
        out = capsys.readouterr()

        client = MlflowClient(url)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 2  # the training and the scoring run reached the server
        seen = [out.out, out.err, caplog.text]
        for run in runs:
            seen += [str(run.data.params), str(run.data.tags), str(list(run.data.metrics))]
        # every text artifact the runs logged (configs, JSON, CSV, YAML) as the server stores them
        for path in (tmp_path / "server" / "artifacts").rglob("*"):
            if path.is_file() and path.suffix in {".json", ".yaml", ".yml", ".csv", ".txt", ".py", ".md", ""}:
                seen.append(path.read_text(errors="replace"))
        # and the local outputs
        for path in (tmp_path / "outputs").rglob("*"):
            if path.is_file() and path.suffix in {".json", ".yaml", ".csv", ".txt"}:
                seen.append(path.read_text(errors="replace"))
        text = "\n".join(seen)
        assert "***@" in text  # the URI is recorded, redacted
        assert PASSWORD not in text and "alice:" not in text
