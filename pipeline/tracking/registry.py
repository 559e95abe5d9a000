"""The model registry: which version is newest, which is the champion, promoting one, and turning a
user's model spec ('latest', 'champion', '3', 'models:/...', a run id) into a registry URI.

Aliases only (`champion`); the deprecated stages are never used.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
RUN_ID = re.compile(r"[0-9a-f]{32}")
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?")


def versions(client: MlflowClient, name: str) -> list:
    """Every version of registered model `name`, oldest first ([] when the model does not exist)."""
    found = client.search_model_versions(f"name='{name}'")
    return sorted(found, key=lambda v: int(v.version))


def newest_version(client: MlflowClient, name: str):
    found = versions(client, name)
    return found[-1] if found else None


def version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The newest version of `name` registered from training run `run_id`, if any."""
    found = [v for v in versions(client, name) if v.run_id == run_id]
    return str(found[-1].version) if found else None


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def registry_uri(client: MlflowClient, name: str, spec: str) -> str | None:
    """'latest' -> models:/<name>/<newest version> (None when nothing is registered); 'champion' or
    '@<alias>' -> models:/<name>@<alias>; '<number>' -> models:/<name>/<number>; a models:/ URI as is;
    anything else (a run id, a folder, a runs:/ URI) -> None."""
    if spec == "latest":
        newest = newest_version(client, name)
        return None if newest is None else f"models:/{name}/{newest.version}"
    if spec == CHAMPION or spec.startswith("@"):
        return f"models:/{name}@{spec.lstrip('@')}"
    if spec.isdigit():
        return f"models:/{name}/{int(spec)}"
    if spec.startswith("models:/"):
        return spec
    return None


def describe(client: MlflowClient, uri: str) -> dict:
    """Name, version and training run of a models:/<name>/<version> or models:/<name>@<alias> URI.

    Raises LookupError naming the model when the version or alias does not exist. A models:/<model id>
    URI (a LoggedModel that was not registered) has no name or version: returns {}.
    """
    match = MODEL_URI.fullmatch(uri)
    if match is None:
        return {}
    name = match["name"]
    try:
        version = client.get_model_version_by_alias(name, match["alias"]) if match["alias"] else \
            client.get_model_version(name, match["version"])
    except MlflowException as err:
        known = ", ".join(str(v.version) for v in versions(client, name)) or "none"
        raise LookupError(f"{uri}: no such model version or alias of '{name}' (versions: {known}); "
                          f"train one with `python -m pipeline train`") from err
    described = {"model_name": name, "model_version": str(version.version), "model_run_id": version.run_id,
                 "model_aliases": ",".join(sorted(version.aliases or [])),
                 # the LoggedModel behind the version ('models:/m-<id>' is its source), for run inputs
                 "model_id": version.model_id or _logged_model_id(str(version.source or ""))}
    if match["alias"]:
        described["model_alias"] = match["alias"]
    if version.tags.get("weights_sha256"):  # recorded at registration: checked again before loading
        described["registered_weights_sha256"] = version.tags["weights_sha256"]
    return described


def _logged_model_id(source: str) -> str:
    """'models:/m-1234...' (a LoggedModel's URI) -> 'm-1234...'; '' for any other source."""
    return source.removeprefix("models:/") if re.fullmatch(r"models:/m-[0-9a-f]+", source) else ""


def promote(client: MlflowClient, name: str, version: str | None) -> dict:
    """Give `version` (default: the newest) the alias `champion`; returns what changed."""
    if version in (None, "", "latest"):
        newest = newest_version(client, name)
        if newest is None:
            raise LookupError(f"registered model '{name}' has no version yet: run `python -m pipeline train` first")
        version = newest.version
    version = str(version)
    describe(client, f"models:/{name}/{version}")  # a clear error when the version does not exist
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return {"registered_model": name, "alias": CHAMPION, "version": version, "previous_champion": previous,
            "model_uri": f"models:/{name}@{CHAMPION}"}
