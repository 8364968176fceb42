"""The `fruitlab` command: thin Typer commands over library functions.

Heavy libraries (torch, lightning, timm, mlflow) are imported inside the commands that need them, so `--help`,
`experiments`, `check` and `data list` answer in about a second. A FruitlabError prints its message, without a
traceback, and exits with status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fruitlab import __version__
from fruitlab.errors import FruitlabError

app = typer.Typer(
    help="Transfer-learning experiments for image classification: fit, sweep, track in MLflow, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: list, fetch.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ExperimentOpt = Annotated[
    str, typer.Option("--experiment", "-e", help="experiment name (experiments/NAME.yaml) or path")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a key, e.g. --set data.batch_size=16 (repeatable)")
]
UriOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"),
]
DataDirOpt = Annotated[
    str | None,
    typer.Option("--data-dir", help="where datasets are cached (default: $FRUITLAB_DATA_DIR or ~/.cache/fruitlab)"),
]
MirrorOpt = Annotated[
    str | None, typer.Option("--mirror", help="local folder holding dataset archives (default: $FRUITLAB_DATA_MIRROR)")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fruitlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    # fruitlab's own messages on stderr; Lightning keeps its own handler (configuring the root logger here
    # would print every Lightning line twice).
    logger = logging.getLogger("fruitlab")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@app.command()
def experiments() -> None:
    """List the experiment files with their one-line descriptions."""
    from fruitlab.config import describe_experiment, experiments_dir, list_experiments

    found = list_experiments()
    if not found:
        raise FruitlabError(
            f"no experiment files (*.yaml) in {experiments_dir().resolve()}; run from the repo root "
            "or set FRUITLAB_EXPERIMENTS"
        )
    width = max(len(n) for n in found)
    for name, path in found.items():
        typer.echo(f"{name:<{width}}  {describe_experiment(path)}")


@app.command()
def check(experiment: ExperimentOpt, set_: SetOpt = None) -> None:
    """Validate an experiment file and its names (dataset, backbone) without training."""
    from fruitlab.config import load_experiment
    from fruitlab.data.registry import get_source, resolve_split

    exp = load_experiment(experiment, set_)
    source = get_source(exp.data.dataset, exp.where("data.dataset"))
    resolve_split(source, exp.data.split, exp.where("data.dataset"))
    from fruitlab.models.names import check_backbone_name

    check_backbone_name(exp.model.backbone, exp.where("model.backbone"))
    phases = ", ".join(f"{p.name or i}:{p.epochs}ep" for i, p in enumerate(exp.finetune.phases))
    typer.echo(f"ok: {exp.name} ({exp.source}) - {exp.model.backbone} on {exp.data.dataset}, phases {phases}")


@app.command()
def fit(
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="experiment name (experiments/NAME.yaml) or path")
    ] = None,
    set_: SetOpt = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="continue an interrupted run by its MLflow run id")
    ] = None,
    tracking_uri: UriOpt = None,
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
) -> None:
    """Train one experiment and log it to MLflow."""
    from fruitlab.config import load_experiment

    _env(tracking_uri, mirror)
    if resume:
        exp = _experiment_of_run(resume, set_)
    elif experiment:
        exp = load_experiment(experiment, set_)
    else:
        raise FruitlabError("give --experiment NAME (see `fruitlab experiments`) or --resume RUN_ID")
    from fruitlab.training.fit import fit as run_fit

    result = run_fit(exp, resume_run_id=resume, data_dir=data_dir)
    if result.metrics:
        summary = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        typer.echo(f"run {result.run_id}  {summary}  ({result.seconds:.0f} s)")
        typer.echo(f"model {result.model_uri}  tracking {result.tracking_uri}  (fruitlab ui)")


def _experiment_of_run(run_id: str, overrides: list[str] | None):
    import yaml

    from fruitlab.config import apply_override, validate_experiment
    from fruitlab.tracking.runs import load_run_config, tracking_uri

    raw = yaml.safe_load(load_run_config(tracking_uri(), run_id))
    for item in overrides or []:
        apply_override(raw, item)
    name = raw.get("tracking", {}).get("experiment") or "resumed"
    return validate_experiment(raw, source=f"run {run_id}", name=name)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port")] = 5000,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    tracking_uri: UriOpt = None,
) -> None:
    """Open the MLflow UI on the same store fruitlab fit logs to."""
    from fruitlab.tracking.runs import ARTIFACT_DIR
    from fruitlab.tracking.runs import tracking_uri as resolve

    uri = resolve(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    cmd += ["--default-artifact-root", Path(ARTIFACT_DIR).resolve().as_uri()]
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl+C to stop)")
    os.execv(sys.executable, cmd)


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets."""
    from fruitlab.data.registry import describe_datasets

    for name, description in describe_datasets():
        typer.echo(f"{name:<22}{description}")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="dataset name (fruitlab data list)")],
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
    force: Annotated[bool, typer.Option(help="fetch and extract again even if present")] = False,
) -> None:
    """Download (or copy from a mirror), verify (sha256) and extract a dataset."""
    from fruitlab.data.fetch import fetch

    path = fetch(name, data_dir=data_dir, mirror=mirror, force=force)
    typer.echo(f"{name}: ready at {path}")


def _env(tracking_uri: str | None, mirror: str | None) -> None:
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if mirror:
        os.environ["FRUITLAB_DATA_MIRROR"] = mirror


def main() -> None:
    try:
        app()
    except FruitlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
