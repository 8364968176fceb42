"""Model references: what a user may type to name a model (or the run that trained it), parsed once, resolved once.

Every command that takes `--model` (predict, evaluate, export, serve, convert-model) and `compare` accept the same
forms, with the same error messages:

    models:/NAME@ALIAS      a registered model's alias (champion, candidate)
    models:/NAME/VERSION    a registered model's version
    models:/m-ID, m-ID      a logged model (MLflow 3's model entity)
    runs:/RUN_ID/model      the model a run logged (RUN_ID may be a unique prefix, as tables print them)
    RUN_ID                  32 hex digits, or a unique prefix of 6 or more
    a folder                a downloaded or saved MLflow model folder (it holds an MLmodel file)

`ModelRef.parse` checks the form without the tracking store; `resolve` finds what it names in the store (an unknown
name gets what the store holds, with 'did you mean').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fruitlab.errors import ModelRefError, did_you_mean
from fruitlab.tracking.tags import MODEL_URI

RUN_ID = re.compile(r"[0-9a-f]{32}")
RUN_PREFIX = re.compile(r"[0-9a-f]{6,31}")  # the 8- to 12-character ids that tables print
LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
DEFAULT_ARTIFACT = "model"  # fit logs its model under this name
FORMS = (
    "models:/NAME@ALIAS (e.g. models:/quickstart@champion), models:/NAME/VERSION, models:/m-ID (a logged model), "
    "runs:/RUN_ID/model, a run id (32 hex digits or a unique prefix of 6 or more) or a folder with an MLmodel file"
)

Kind = Literal["alias", "version", "logged_model", "run", "folder"]


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: which form it is and its parts; nothing looked up yet."""

    text: str  # as given
    kind: Kind
    name: str | None = None  # registered model (alias, version)
    alias: str | None = None
    version: str | None = None
    model_id: str | None = None  # logged model m-...
    run: str | None = None  # run id or unique prefix
    artifact: str = DEFAULT_ARTIFACT  # runs:/ID/<artifact>
    path: Path | None = None  # folder

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        text = text.strip()
        if text.startswith("models:/"):
            return _parse_models_uri(text)
        if text.startswith("runs:/"):
            run, _, artifact = text.removeprefix("runs:/").partition("/")
            if RUN_ID.fullmatch(run) or RUN_PREFIX.fullmatch(run):
                return cls(text, "run", run=run, artifact=artifact.strip("/") or DEFAULT_ARTIFACT)
            raise ModelRefError(f"{text!r}: runs:/ needs a run id (32 hex digits or a unique prefix), then /model")
        if LOGGED_MODEL_ID.fullmatch(text):
            return cls(text, "logged_model", model_id=text)
        path = Path(text).expanduser()
        if path.exists():
            if not (path / "MLmodel").is_file():
                raise ModelRefError(f"{text}: not a logged model folder (it has no MLmodel file)")
            return cls(text, "folder", path=path.resolve())
        if RUN_ID.fullmatch(text) or RUN_PREFIX.fullmatch(text):
            return cls(text, "run", run=text)
        raise ModelRefError(f"unknown model {text!r}: expected {FORMS}")

    @property
    def follows_alias(self) -> bool:
        """Does it name whatever version an alias points at now (serve reloads when the alias moves)?"""
        return self.kind == "alias"

    @property
    def short(self) -> str:
        """For file and run names: NAME@ALIAS, NAME/VERSION, m-ID, the run id's first 8 digits, the folder's name."""
        if self.kind == "folder" and self.path is not None:
            return self.path.name
        if self.kind == "run" and self.run:
            return self.run[:8]
        return self.text.removeprefix("models:/")


@dataclass(frozen=True)
class ResolvedModel:
    """What a reference names in the store right now. `uri` pins it: an alias becomes its current version."""

    ref: ModelRef
    uri: str  # models:/NAME/VERSION, models:/m-ID, runs:/ID/ARTIFACT, or the folder's path
    run_id: str | None = None  # the run that logged the model
    model_id: str | None = None  # the logged model m-...
    name: str | None = None  # registered model and version, when it was named through the registry
    version: str | None = None


def resolve(client: MlflowClient | None, ref: ModelRef | str, uri: str) -> ResolvedModel:
    """Look `ref` up in the store at `uri`; ModelRefError naming what exists when it names nothing.

    A folder needs no store: `client` may then be None.
    """
    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    if ref.kind == "folder":
        return ResolvedModel(ref, str(ref.path))
    if client is None:
        raise ModelRefError(f"{ref.text}: a tracking store is needed to resolve it")
    if ref.kind == "logged_model":
        model_id = str(ref.model_id)
        return ResolvedModel(ref, f"models:/{model_id}", _run_of_logged_model(client, model_id), model_id)
    if ref.kind == "run":
        run = _find_run(client, str(ref.run), ref.text, uri)
        run_id = run.info.run_id
        model_uri = run.data.tags.get(MODEL_URI) if ref.artifact == DEFAULT_ARTIFACT else None
        model_id = _model_id_of_run(client, run, ref.artifact)
        return ResolvedModel(ref, model_uri or f"runs:/{run_id}/{ref.artifact}", run_id, model_id)
    version = model_version(client, ref)
    model_id = getattr(version, "model_id", None) or _logged_model_id(version.source)
    run_id = version.run_id or (_run_of_logged_model(client, model_id) if model_id else None)
    return ResolvedModel(
        ref, f"models:/{version.name}/{version.version}", run_id, model_id, version.name, str(version.version)
    )


def resolve_run(client: MlflowClient, ref: ModelRef | str, uri: str) -> Run:
    """The run that logged the model `ref` names (compare, export's default check data)."""
    resolved = resolve(client, ref, uri)
    if resolved.run_id is None:
        what = "a model folder" if resolved.ref.kind == "folder" else f"{resolved.ref.text} (not logged by a run)"
        raise ModelRefError(f"{what} has no run in the tracking store {uri}; give a run id or a model URI")
    return _find_run(client, resolved.run_id, resolved.ref.text, uri)


def model_version(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    """The registered version an alias or version reference names; errors list names, aliases or versions."""
    name = str(ref.name)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models()]
        raise ModelRefError(
            f"no registered model {name!r}{did_you_mean(name, known)} (registered: {', '.join(known) or 'none'}); "
            "register one with `fruitlab promote -e EXPERIMENT`"
        ) from None
    if ref.alias is not None:
        aliases = dict(registered.aliases or {})
        if ref.alias not in aliases:
            listing = ", ".join(f"{a} (version {v})" for a, v in aliases.items()) or "none"
            raise ModelRefError(
                f"model {name!r} has no alias {ref.alias!r}{did_you_mean(ref.alias, aliases)} (aliases: {listing})"
            )
        return client.get_model_version_by_alias(name, ref.alias)
    try:
        return client.get_model_version(name, str(ref.version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise ModelRefError(
            f"model {name!r} has no version {ref.version!r} (versions: {', '.join(map(str, versions)) or 'none'})"
        ) from None


def all_runs(client: MlflowClient) -> list[Run]:
    """Every active run of every experiment (for prefix look-ups and messages; stores here hold thousands at most)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=50000) if ids else []


# ------------------------------------------------------------------------------------------------ internals
def _parse_models_uri(text: str) -> ModelRef:
    body = text.removeprefix("models:/").strip("/")
    if LOGGED_MODEL_ID.fullmatch(body):
        return ModelRef(text, "logged_model", model_id=body)
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias and "/" not in body:
            return ModelRef(text, "alias", name=name, alias=alias)
    elif "/" in body:
        name, version = body.split("/", 1)
        if name and version.isdigit():
            return ModelRef(text, "version", name=name, version=version)
    raise ModelRefError(f"{text!r}: give models:/NAME@ALIAS, models:/NAME/VERSION (a number) or models:/m-ID")


def _find_run(client: MlflowClient, run: str, text: str, uri: str) -> Run:
    if RUN_ID.fullmatch(run):
        try:
            return client.get_run(run)
        except MlflowException:
            raise ModelRefError(_unknown_run(client, text, uri)) from None
    matches = [r for r in all_runs(client) if r.info.run_id.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(r.info.run_id[:12] for r in matches[:5])
        raise ModelRefError(f"run id prefix {run!r} matches {len(matches)} runs ({ids}); give more characters")
    raise ModelRefError(_unknown_run(client, text, uri))


def _run_of_logged_model(client: MlflowClient, model_id: str) -> str | None:
    try:
        return client.get_logged_model(model_id).source_run_id
    except MlflowException:
        raise ModelRefError(f"no logged model {model_id!r} in the tracking store") from None


def _model_id_of_run(client: MlflowClient, run: Run, artifact: str) -> str | None:
    tagged = _logged_model_id(run.data.tags.get(MODEL_URI)) if artifact == DEFAULT_ARTIFACT else None
    if tagged:
        return tagged
    run_id = run.info.run_id
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{artifact}'"
    )
    return found[0].model_id if found else None


def _logged_model_id(source: str | None) -> str | None:
    return source.removeprefix("models:/") if source and source.startswith("models:/m-") else None


def _unknown_run(client: MlflowClient, text: str, uri: str) -> str:
    found = all_runs(client)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    names = sorted({experiments.get(r.info.experiment_id, "?") for r in found})
    hint = did_you_mean(text, [r.info.run_id for r in found], n=1)
    where = f"{len(found)} runs in experiments {', '.join(names)}" if found else "no runs"
    return f"no run {text!r} in the tracking store {uri}{hint} (it has {where}); give {FORMS}"
