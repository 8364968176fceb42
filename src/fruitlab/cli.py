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
from typing import Annotated, Any

import typer

from fruitlab import __version__
from fruitlab.errors import FruitlabError

app = typer.Typer(
    help="Transfer-learning experiments for image classification: fit, sweep, track in MLflow, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: list, fetch, check.", no_args_is_help=True)
app.add_typer(data_app, name="data")
predictions_app = typer.Typer(help="The prediction log of `fruitlab serve`: export.", no_args_is_help=True)
app.add_typer(predictions_app, name="predictions")

EXPERIMENT_HELP = "experiment name (`fruitlab experiments`: packaged or ./experiments/NAME.yaml) or a .yaml path"
ExperimentOpt = Annotated[str, typer.Option("--experiment", "-e", help=EXPERIMENT_HELP)]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a key, e.g. --set data.batch_size=16 (repeatable)")
]
UriOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"),
]
DataDirOpt = Annotated[
    str | None,
    typer.Option(
        "--data-dir", help="where datasets are cached (default: $FRUITLAB_DATA_DIR, else ~/.cache/fruitlab/datasets)"
    ),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option("--threshold", help="answer 'unknown' where the top probability is below this (0-1)"),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID, runs:/RUN_ID/model, a run id (or a unique "
        "prefix) or a model folder",
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="also load a model an older fruitlab logged as a pickle; unpickling runs code from the tracking store, "
        "so only for a store you trust (better: fruitlab convert-model)",
    ),
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
        handler = _StderrNow()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_LightningNoise())
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"


class _StderrNow(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message: while Lightning's Rich progress bar is live, that is Rich's
    proxy, which prints the line above the bar (a handler holding the original stderr writes into the bar line)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the property answers instead
        pass


class _LightningNoise(logging.Filter):
    """Lightning's lines a fruitlab user has no use for: its cloud-logger advert (fruitlab logs to MLflow), the
    accelerators that are absent (a GPU that is there and used is still said), and the planned end of a fit."""

    NOISE = ("litlogger", "available: False", "`Trainer.fit` stopped: `max_epochs=")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(noise in message for noise in self.NOISE)


@app.command()
def experiments() -> None:
    """List the experiments by name: where each file comes from (packaged, ./experiments) and its description."""
    from fruitlab.config import PACKAGED_EXPERIMENTS, describe_experiment, find_experiments, local_experiments_dir

    found = find_experiments()
    if not found:
        raise FruitlabError(f"no experiment files (*.yaml) in {local_experiments_dir()} or {PACKAGED_EXPERIMENTS}")
    width = max(len(n) for n in found)
    origin_width = max(len(f.shown_origin()) for f in found.values())
    for name, file in found.items():
        typer.echo(f"{name:<{width}}  {file.shown_origin():<{origin_width}}  {describe_experiment(file.path)}")
    typer.echo(
        f"packaged: {PACKAGED_EXPERIMENTS}; local: {local_experiments_dir().absolute()} (a local file of the same "
        "name wins); -e also takes a path",
        err=True,
    )


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="your images: <class>/ folders, or train/<class>/ (+ val/, test/)")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="experiment and MLflow experiment name (default: the folder's)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="the file to write (default: ./experiments/NAME.yaml)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write an experiment file for your image folder: classes counted, the quickstart's recipe, a split that fits."""
    from fruitlab.data.starter import write_starter

    typer.echo(write_starter(folder, name=name, out=out, force=force).summary())


@app.command()
def check(experiment: ExperimentOpt, set_: SetOpt = None) -> None:
    """Validate an experiment file and its names (dataset, backbone) without training."""
    from fruitlab.config import load_experiment

    exp = load_experiment(experiment, set_)
    _check_names(exp)
    phases = ", ".join(f"{p.name or i}:{p.epochs}ep" for i, p in enumerate(exp.finetune.phases))
    typer.echo(f"ok: {exp.name} ({exp.source}) - {exp.model.backbone} on {exp.data.dataset}, phases {phases}")


def _check_names(exp: Any) -> None:
    """Dataset, split scheme, backbone (and sweep keys): a typo fails in about a second, before heavy imports."""
    from fruitlab.data.registry import get_source, resolve_split
    from fruitlab.models.names import check_backbone_name

    source = get_source(exp.data.dataset, exp.where("data.dataset"))
    resolve_split(source, exp.data.split, exp.where("data.dataset"))
    check_backbone_name(exp.model.backbone, exp.where("model.backbone"))
    if exp.sweep is not None:  # every search-space key and both ends of every range
        from fruitlab.sweep.space import check_space

        check_space(exp)


@app.command()
def fit(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help=EXPERIMENT_HELP)] = None,
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
    _check_names(exp)
    from fruitlab.data.registry import load_dataset

    # The data is listed and checked (classes, splits) before torch and Lightning load: a folder with one class
    # or no images fails in a second, not after the training stack's imports.
    splits = load_dataset(exp.data, seed=exp.seed, data_dir=data_dir, where=exp.where("data.dataset"))
    from fruitlab.training.run_start import RUN_ID_ENV, EarlyRun, run_tags

    # The MLflow run is opened by a child on the other core while this process imports torch and Lightning (not for
    # --resume, nor in a DDP worker Lightning re-launched, which joins its parent's run).
    early = None if resume or os.environ.get(RUN_ID_ENV) else EarlyRun(exp, run_tags(exp, splits, data_dir))
    from fruitlab.training.fit import fit as run_fit

    result = run_fit(exp, resume_run_id=resume, data_dir=data_dir, splits=splits, early_run=early)
    from fruitlab.evaluation.report import format_evaluation

    for split, evaluation in result.reports.items():
        typer.echo(format_evaluation(evaluation, split))
    if result.metrics:
        summary = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        typer.echo(f"run {result.run_id}  {summary}  ({result.seconds:.0f} s)")
        typer.echo(f"model {result.model_uri}  tracking {result.tracking_uri}  (fruitlab ui)")


@app.command("lr-find")
def lr_find(
    experiment: ExperimentOpt,
    phase: Annotated[int, typer.Option("--phase", "-p", help="index of the phase in finetune.phases (0 = first)")],
    set_: SetOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="optimizer steps of the test (one lr each)")] = 100,
    min_lr: Annotated[float, typer.Option("--min-lr", help="first learning rate")] = 1e-7,
    max_lr: Annotated[
        float, typer.Option("--max-lr", help="last learning rate (the test stops early on divergence)")
    ] = 1.0,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for lr-find-<experiment>-phase<N>.png")] = Path(
        "reports"
    ),
    tracking_uri: UriOpt = None,
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
) -> None:
    """Learning-rate range test of one phase (Lightning's Tuner.lr_find): plot loss against lr, suggest an lr.

    The phase trains exactly the parameters fit trains in it (and uses the feature cache where fit would), starting
    from the model's starting weights: the earlier phases are NOT trained first, so phase 1 after a head-only
    phase 0 sees a fresh head. The suggestion is the steepest descent of the smoothed loss per decade of lr (not
    fastai's valley); every parameter group runs at the same lr during the test. Logs the plot and suggestion to MLflow.
    """
    from fruitlab.config import load_experiment

    _env(tracking_uri, mirror)
    exp = load_experiment(experiment, set_)
    _check_names(exp)
    from fruitlab.training.lr_find import lr_find as run_lr_find

    result = run_lr_find(exp, phase, num_training=steps, min_lr=min_lr, max_lr=max_lr, out_dir=out, data_dir=data_dir)
    recipe = exp.finetune.phases[phase].optimizer.lr
    if result.suggestion is None:
        typer.echo(f"no suggestion: too few finite losses in {len(result.lrs)} steps; try more --steps")
    else:
        label = exp.finetune.phases[phase].name or f"phase{phase}"
        typer.echo(
            f"finetune.phases.{phase} ({label!r}): suggested lr {result.suggestion:.3g} "
            f"(steepest descent of the loss; the recipe has {recipe:.3g})"
        )
        typer.echo("use it: fruitlab fit -e " + experiment + "".join(f" --set {o}" for o in result.overrides))
    typer.echo(f"plot {result.figure}  run {result.run_id}  tracking {result.tracking_uri}  ({result.seconds:.0f} s)")


def _experiment_of_run(run_id: str, overrides: list[str] | None):
    import yaml

    from fruitlab.config import apply_override, validate_experiment
    from fruitlab.tracking.runs import check_resumable, load_run_config, tracking_uri

    experiment = check_resumable(tracking_uri(), run_id)  # a finished run is refused before anything loads
    raw = yaml.safe_load(load_run_config(tracking_uri(), run_id))
    for item in overrides or []:
        apply_override(raw, item)
    # The run's own MLflow experiment: the banner names it, and the logger writes to it.
    return validate_experiment(raw, source=f"run {run_id}", name=experiment)


@app.command()
def sweep(
    experiment: ExperimentOpt,
    set_: SetOpt = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", "-n", min=1, help="trials in the study, all workers (default: sweep.trials)"),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="seconds; then this worker starts no new trial")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Optuna storage URL; workers sharing one study share it, e.g. postgresql://user@host/db "
            "(default: sqlite optuna.db beside the MLflow store)",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="study name; the same name resumes it (default: experiment name)")
    ] = None,
    tracking_uri: UriOpt = None,
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
) -> None:
    """Search the experiment's `sweep:` space with Optuna; each trial is a fit, nested under one MLflow run."""
    from fruitlab.config import load_experiment

    _env(tracking_uri, mirror)
    exp = load_experiment(experiment, set_)
    from fruitlab.sweep.space import check_space  # a bad space or URL fails before torch is even imported

    check_space(exp)
    if storage:
        from fruitlab.sweep.storage import check_url

        check_url(storage)
    from fruitlab.sweep.study import run_sweep

    try:
        result = run_sweep(
            exp, trials=trials, timeout=timeout, storage=storage, study_name=study, data_dir=data_dir, echo=typer.echo
        )
    except KeyboardInterrupt:
        typer.echo(f"interrupted: run the same command again to resume study {study or exp.name!r}", err=True)
        raise typer.Exit(130) from None
    best = result.summary.best
    found = f"best trial {best.number}: {best.value:.4f}" if best else "no complete trial"
    typer.echo(f"study {result.study_name}  {found}  parent run {result.parent_run_id}  tracking {result.tracking_uri}")


@app.command()
def promote(
    experiment: ExperimentOpt,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="rank runs by this metric (default: val_best/class/acc; multi-task: joint)"),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="registered model name (default: the experiment name)")
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="promote this run instead of the best one")] = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Register the best run's model, set alias `candidate`; move `champion` only if it beats the champion."""
    _env(tracking_uri, None)
    from fruitlab.tracking.registry import promote as run_promote

    result = run_promote(experiment, metric=metric, model_name=model_name, run_id=run)
    typer.echo(result.summary())


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files and folders (searched recursively)")],
    model: ModelOpt,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="labels per image and task")] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="also write every prediction: .csv or .json")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")] = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    threshold: ThresholdOpt = None,
    trust_pickle: TrustPickleOpt = False,
    tracking_uri: UriOpt = None,
) -> None:
    """Label images with a logged or registered model, using its own preprocessing and labels."""
    _env(tracking_uri, None)
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise FruitlabError(f"--output {output}: write .csv or .json")
    from fruitlab.evaluation.confidence import check_threshold
    from fruitlab.inference.predict import find_images, format_prediction, load_predictor, write_predictions

    check_threshold(threshold)

    paths = find_images(images)
    if not paths:
        raise FruitlabError(f"no image files in {', '.join(map(str, images))}")
    predictor = load_predictor(model, device=device, trust_pickle=trust_pickle)
    predictions = []
    for pred in predictor.predict(paths, top_k=top_k, batch_size=batch_size, threshold=threshold):
        predictions.append(pred)
        typer.echo(format_prediction(pred), err=bool(pred.error))
    if output is not None:
        write_predictions(predictions, output)
    bad = sum(1 for p in predictions if p.error)
    note = f", {bad} unreadable" if bad else ""
    written = f"; written to {output}" if output else ""
    unknown = sum(1 for p in predictions if "unknown" in p.answers.values())
    note += f", {unknown} unknown below {threshold:g}" if threshold is not None else ""
    note += f", temperature {predictor.temperature}" if predictor.temperature else ""
    shown = model if model == predictor.source else f"{model} ({predictor.source})"  # an alias: its version too
    typer.echo(f"{len(predictions) - bad} images labelled by {shown}{note}{written}", err=True)


@app.command()
def evaluate(
    model: ModelOpt,
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d", help="dataset name (fruitlab data list) or a folder: <class>/ or train/ val/ test/"
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option("--split", help="val (or valid) or test (default: val; a folder of <class>/ folders: all images)"),
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="also average with mirrored images; reports the change")] = False,
    threshold: ThresholdOpt = None,
    fit_temperature: Annotated[
        bool,
        typer.Option("--fit-temperature", help="fit a temperature on the val split and store it with the model"),
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="folder for the HTML report (default: ./reports)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")] = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    corruptions: Annotated[
        bool,
        typer.Option("--corruptions", help="also score the images under common corruptions (noise, blur, JPEG, ...)"),
    ] = False,
    corruption_names: Annotated[
        str | None,
        typer.Option(
            "--corruption-names",
            help="with --corruptions: some of gaussian_noise, gaussian_blur, jpeg, brightness, contrast, "
            "colour_shift, rotation, crop (comma-separated; default all)",
        ),
    ] = None,
    severities: Annotated[
        str | None,
        typer.Option("--corruption-severities", help="severities 1 (mild) to 5 (severe), e.g. 1,3,5 (the default)"),
    ] = None,
    corruption_images: Annotated[
        int | None,
        typer.Option(
            "--corruption-images",
            min=1,
            help="with --corruptions: a seeded, class-stratified sample of this many images (default: all)",
        ),
    ] = None,
    shift: Annotated[
        bool,
        typer.Option(
            "--shift", help="--data is other photos of the same classes: report them beside the model's own val split"
        ),
    ] = False,
    copy_check: Annotated[
        bool,
        typer.Option(
            "--copy-check/--no-copy-check", help="count the images that are copies of the model's training images"
        ),
    ] = True,
    trust_pickle: TrustPickleOpt = False,
    tracking_uri: UriOpt = None,
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
) -> None:
    """Evaluate a model on a split: metrics, calibration, thresholds, images, Grad-CAM, training copies, optionally
    robustness to corruptions and distribution shift; an MLflow run + HTML."""
    _env(tracking_uri, mirror)
    from fruitlab.evaluation.confidence import check_threshold
    from fruitlab.evaluation.corruptions import parse_corruptions, parse_severities
    from fruitlab.inference.evaldata import check_data, check_split

    check_threshold(threshold)  # cheap checks before the heavy imports
    check_split(split)
    check_data(data)
    names = parse_corruptions(corruption_names) if corruptions else None
    levels = parse_severities(severities)
    if (severities, corruption_names, corruption_images) != (None, None, None) and not corruptions:
        raise FruitlabError("--corruption-names, --corruption-severities and --corruption-images go with --corruptions")
    from fruitlab.inference.evaluate import evaluate as run_evaluate

    result = run_evaluate(
        model,
        data,
        split=split,
        tta=tta,
        threshold=threshold,
        fit_temp=fit_temperature,
        out=out,
        data_dir=data_dir,
        device=device,
        batch_size=batch_size,
        trust_pickle=trust_pickle,
        corruptions=names,
        severities=levels,
        corruption_sample=corruption_images,
        shift=shift,
        copy_check=copy_check,
    )
    typer.echo(f"{result.summary()}  ({result.seconds:.0f} s)")


@app.command()
def compare(
    run_refs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[RUN_OR_MODEL]...",
            help="run ids (or unique prefixes), runs:/ID/model, models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID",
        ),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="instead: the best finished runs of this MLflow experiment")
    ] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="with --experiment: how many runs")] = 3,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="with --experiment: rank by it (default val_best/joint/acc, else class/acc)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for compare-<...>.png and .html")] = Path("reports"),
    tracking_uri: UriOpt = None,
) -> None:
    """Runs side by side: metrics, key params, durations, status; learning curves as PNG and self-contained HTML."""
    _env(tracking_uri, None)
    from rich.console import Console

    from fruitlab.tracking import runs
    from fruitlab.tracking.compare import compare_runs
    from fruitlab.tracking.compare_report import build_table, write_report

    comparison = compare_runs(runs.tracking_uri(), run_refs, experiment, top, metric)
    Console().print(build_table(comparison))
    png, page = write_report(comparison, out)
    typer.echo(f"learning curves {png}  report {page}")


@app.command()
def export(
    model: ModelOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript")] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="folder, or the .onnx/.pt file (default: exports/<model>/model.onnx|pt)"),
    ] = None,
    check_dir: Annotated[
        Path | None, typer.Option("--check", help="check the export on images in this folder (searched recursively)")
    ] = None,
    check_data: Annotated[
        str | None,
        typer.Option("--check-data", help="check on this dataset's val images (default: the model's own dataset)"),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="images to check on, spread over the set")] = 32,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0, help="largest allowed abs difference of logits and probabilities")
    ] = 1e-4,
    trust_pickle: TrustPickleOpt = False,
    tracking_uri: UriOpt = None,
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
) -> None:
    """Export a model to ONNX or TorchScript (labels and preprocessing beside it); check it against PyTorch."""
    _env(tracking_uri, mirror)
    from fruitlab.inference.export import export_model

    result = export_model(
        model,
        fmt,
        out,
        check_dir=check_dir,
        check_data=check_data,
        samples=samples,
        tolerance=tolerance,
        data_dir=data_dir,
        trust_pickle=trust_pickle,
    )
    for line in result.summary():
        typer.echo(line)


@app.command("convert-model")
def convert_model(
    model: ModelOpt,
    trust_pickle: TrustPickleOpt = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="write an MLflow model folder here instead of logging to the model's run"),
    ] = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Rewrite a model an older fruitlab logged as a pickle as safetensors + a JSON spec (checked: same logits)."""
    _env(tracking_uri, None)
    from fruitlab.inference.convert import convert_model as run_convert

    typer.echo(run_convert(model, out=out, trust_pickle=trust_pickle).summary())


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port")] = 5000,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    tracking_uri: UriOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="server processes (one person browsing needs one)")] = 1,
) -> None:
    """Open the MLflow UI on the same store fruitlab fit logs to, in its model-training mode."""
    from fruitlab.tracking.runs import ARTIFACT_DIR, ui_url
    from fruitlab.tracking.runs import tracking_uri as resolve

    uri = resolve(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    cmd += ["--default-artifact-root", Path(ARTIFACT_DIR).resolve().as_uri(), "--workers", str(workers)]
    cmd += ["--app-name", "fruitlab"]  # MLflow's app plus the page that opens model-training mode (ui_app.py)
    typer.echo(f"MLflow UI for {uri}: open {ui_url(f'http://{host}:{port}')}  (Ctrl+C to stop)")
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


@data_app.command("check")
def data_check(
    target: Annotated[
        str, typer.Argument(help="dataset name (fruitlab data list) or a folder: train/ val|valid/ test/")
    ],
    split: Annotated[
        str | None, typer.Option("--split", help="split scheme (default: the dataset's own; 'grouped' for any)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for report.json and the grids (default: reports/data-check/...)"),
    ] = None,
    data_dir: DataDirOpt = None,
    mirror: MirrorOpt = None,
    seed: Annotated[int, typer.Option(help="seed of a held-out val split (the experiments' default: 42)")] = 42,
    near: Annotated[
        bool, typer.Option("--near/--no-near", help="search for near-duplicates across splits (the slow part)")
    ] = True,
) -> None:
    """Counts, imbalance, unreadable files, duplicates and near-duplicates (copies across splits) of a dataset."""
    from fruitlab.data.checks import check_dataset, data_config_for
    from fruitlab.data.grids import save_report

    cfg = data_config_for(target, split)
    report = check_dataset(cfg, seed=seed, data_dir=data_dir, mirror=mirror, near=near)
    for line in report.summary():
        typer.echo(line)
    folder = out or Path("reports", "data-check", f"{report.dataset}-{report.scheme}")
    written = save_report(report, folder)
    seconds = ", ".join(f"{stage} {t:.1f} s" for stage, t in report.seconds.items())
    typer.echo(f"saved {', '.join(str(p) for p in written.values())}  ({seconds})")


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="models:/NAME@champion (followed when the alias moves), models:/NAME/VERSION, models:/m-ID, "
            "runs:/RUN_ID/model, a run id (or a unique prefix) or a model folder; never a pickle (convert-model)",
        ),
    ],
    db: Annotated[
        str, typer.Option("--db", help="prediction log: a SQLAlchemy URL, e.g. postgresql://user@host/db, or a file")
    ] = "sqlite:///predictions.db",
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    poll: Annotated[
        str,
        typer.Option(
            "--poll",
            help="look for a new version of the alias this often, e.g. 30s, 5m; 0 = only on POST /admin/reload",
        ),
    ] = "0",
    wait_for_model: Annotated[
        bool,
        typer.Option(
            "--wait-for-model", help="start without the model and load it once it exists (/ready: 503 until then)"
        ),
    ] = False,
    max_mb: Annotated[float, typer.Option("--max-mb", help="largest upload per file, MB (413 beyond)")] = 8.0,
    max_files: Annotated[int, typer.Option("--max-files", help="images per request")] = 8,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="width x height per image (decompression bombs: 413)")
    ] = 40_000_000,
    concurrency: Annotated[int, typer.Option("--concurrency", help="requests predicted at once")] = 2,
    queue: Annotated[
        int, typer.Option("--queue", help="requests waiting beyond those; more get 503 + Retry-After")
    ] = 16,
    max_request_pixels: Annotated[
        int,
        typer.Option("--max-request-pixels", help="decoded pixels of all images of one request together (413 beyond)"),
    ] = 100_000_000,
    admin_token_file: Annotated[
        Path | None,
        typer.Option(
            "--admin-token-file",
            help="file holding the admin bearer token (else $FRUITLAB_ADMIN_TOKEN_FILE or $FRUITLAB_ADMIN_TOKEN)",
        ),
    ] = None,
    insecure_admin: Annotated[
        bool,
        typer.Option(
            "--insecure-admin",
            help="without a token, open /admin/reload and the prediction log to anyone (trusted networks only)",
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="one log line per request")] = True,
    tracking_uri: UriOpt = None,
) -> None:
    """Serve a model: upload page, dashboard, JSON API; every answered prediction is logged to --db.

    The admin and log routes (POST /admin/reload, GET /predictions, GET /predictions/stats) need
    `Authorization: Bearer <token>` with the token from $FRUITLAB_ADMIN_TOKEN or a file; without one they are off.
    """
    _env(tracking_uri, None)
    from fruitlab.serving.settings import ServeSettings, parse_seconds, read_admin_token

    settings = ServeSettings(
        model=model,
        db=db,
        tracking_uri=tracking_uri,
        poll_seconds=parse_seconds(poll),
        wait_for_model=wait_for_model,
        device=device,
        max_bytes=int(max_mb * 2**20),
        max_files=max_files,
        max_pixels=max_pixels,
        concurrency=concurrency,
        queue=queue,
        max_request_pixels=max_request_pixels,
        admin_token=read_admin_token(os.environ, str(admin_token_file) if admin_token_file else None),
        insecure_admin=insecure_admin,
    )
    from fruitlab.serving.log import normalize_url

    normalize_url(db)  # a malformed URL fails here, before torch and MLflow are imported
    from fruitlab.serving.app import run_server

    run_server(settings, host, port, access_log=access_log)


@predictions_app.command("export")
def predictions_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv or parquet")] = "csv",
    db: Annotated[
        str, typer.Option("--db", help="the prediction log (as given to serve --db)")
    ] = "sqlite:///predictions.db",
) -> None:
    """Write every logged prediction to CSV or Parquet (labels and probabilities as JSON text)."""
    from fruitlab.serving.log import PredictionLog, normalize_url

    if fmt not in ("csv", "parquet"):
        raise FruitlabError(f"--format {fmt!r}: choose csv or parquet")
    if db.startswith("sqlite") or "://" not in db:
        _existing_sqlite(normalize_url(db))
    log = PredictionLog(db)
    try:
        count = log.export(out, fmt)
    finally:
        log.close()
    typer.echo(f"{count} predictions from {log.shown_url} written to {out}")


def _existing_sqlite(url: str) -> None:
    """Exporting must not create an empty log where a typo points."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:" and not Path(database).is_file():
        raise FruitlabError(f"--db {url}: no such SQLite file ({Path(database).resolve()})")


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
