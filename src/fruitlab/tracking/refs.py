"""What a user may type to name a run: a run id (or a unique prefix of one, as tables print them), `runs:/ID/...`,
`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/m-ID` (MLflow 3's logged model), all resolved to the run
that trained the model. An unknown name is an error that says what the store holds, with 'did you mean'.
"""

from __future__ import annotations

import re

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fruitlab.errors import TrackingError, did_you_mean

RUN_ID = re.compile(r"[0-9a-f]{32}")
RUN_PREFIX = re.compile(r"[0-9a-f]{6,31}")  # the 8- to 12-character ids that tables print


def resolve_run(client: MlflowClient, ref: str, uri: str) -> Run:
    """The run behind `ref` (see the module docstring); TrackingError naming what exists when there is none."""
    ref = ref.strip()
    if ref.startswith("models:/"):
        return _get_run(client, _run_id_of_model(client, ref), ref, uri)
    run_id = ref.removeprefix("runs:/").split("/", 1)[0]
    if RUN_ID.fullmatch(run_id):
        return _get_run(client, run_id, ref, uri)
    if RUN_PREFIX.fullmatch(run_id):
        matches = [r for r in all_runs(client) if r.info.run_id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(r.info.run_id[:12] for r in matches[:5])
            raise TrackingError(f"run id prefix {run_id!r} matches {len(matches)} runs ({ids}); give more characters")
    raise TrackingError(_unknown_run(client, ref, uri))


def model_version(client: MlflowClient, ref: str) -> ModelVersion:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION`; errors list the registered names, aliases or versions."""
    body = ref.removeprefix("models:/")
    name, alias = body.split("@", 1) if "@" in body else (body.split("/", 1)[0], None)
    version = body.split("/", 1)[1] if alias is None and "/" in body else None
    if alias is None and version is None:
        raise TrackingError(f"{ref!r}: give models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models()]
        raise TrackingError(
            f"no registered model {name!r}{did_you_mean(name, known)} (registered: {', '.join(known) or 'none'}); "
            "register one with `fruitlab promote -e EXPERIMENT`"
        ) from None
    if alias is not None:
        aliases = dict(registered.aliases or {})
        if alias not in aliases:
            listing = ", ".join(f"{a} (version {v})" for a, v in aliases.items()) or "none"
            raise TrackingError(
                f"model {name!r} has no alias {alias!r}{did_you_mean(alias, aliases)} (aliases: {listing})"
            )
        return client.get_model_version_by_alias(name, alias)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise TrackingError(
            f"model {name!r} has no version {version!r} (versions: {', '.join(map(str, versions)) or 'none'})"
        ) from None


def all_runs(client: MlflowClient) -> list[Run]:
    """Every active run of every experiment (for prefix look-ups and messages; stores here hold thousands at most)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=50000) if ids else []


# ------------------------------------------------------------------------------------------------ internals
def _run_id_of_model(client: MlflowClient, ref: str) -> str:
    body = ref.removeprefix("models:/")
    if body.startswith("m-"):  # a logged model id (MLflow 3)
        try:
            return client.get_logged_model(body.split("/", 1)[0]).source_run_id
        except MlflowException:
            raise TrackingError(f"no logged model {body!r} in the tracking store") from None
    version = model_version(client, ref)
    if version.run_id:
        return version.run_id
    source = version.source or ""
    if source.startswith("models:/m-"):
        return client.get_logged_model(source.removeprefix("models:/").split("/", 1)[0]).source_run_id
    raise TrackingError(f"{ref} (source {source}) was not logged by a run, so it has no run to compare")


def _get_run(client: MlflowClient, run_id: str, ref: str, uri: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise TrackingError(_unknown_run(client, ref, uri)) from None


def _unknown_run(client: MlflowClient, ref: str, uri: str) -> str:
    found = all_runs(client)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    names = sorted({experiments.get(r.info.experiment_id, "?") for r in found})
    hint = did_you_mean(ref, [r.info.run_id for r in found], n=1)
    where = f"{len(found)} runs in experiments {', '.join(names)}" if found else "no runs"
    return (
        f"no run {ref!r} in the tracking store {uri}{hint} (it has {where}); give a run id (32 hex digits or a "
        "unique prefix), runs:/ID/model, models:/NAME@ALIAS or models:/NAME/VERSION"
    )
