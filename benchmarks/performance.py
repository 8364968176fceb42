"""fruitlab's speed on this machine: one command, one results file that names the machine.

    .venv/bin/python benchmarks/performance.py all --out benchmarks/performance.md     # every part
    .venv/bin/python benchmarks/performance.py overhead [--repeats N] [--out FILE]     # one part alone
    .venv/bin/python benchmarks/performance.py all --quick                             # smoke run, tiny settings

Parts (each section of the results begins with the machine it ran on):
- overhead: `fruitlab fit -e benchmarks/overhead.yaml` against benchmarks/handloop.py, the same work as a plain
  PyTorch loop, both as whole processes in a pseudo-terminal (progress bar as users see it), in alternating order.
  Wall time per process, and the split each side reports from inside (set-up, training, finishing; fit's from its
  MLflow run), so that start-up and imports show apart.
- loader: images/s of fit's train DataLoader (0, 1, 2 workers), of the model's training step on random tensors
  (2 and 1 torch threads) and of the two together, for CIFAR-10 at 32 px (vgg16_cifar10) and the fruit photos at
  224 px (quickstart): which one bounds training.
- predict: single-image latency and batch throughput of fruitlab's predict path, and the `fruitlab predict`
  command on a folder of 50 photos in a fresh process. Without --model, a tiny fit logs a model first.
- feature_cache: quickstart's frozen phase (no augmentation: the exact case) with the feature cache off and on:
  seconds per epoch, val accuracy per epoch, and the difference between the two trained heads.
- sweep: a reduced `fruitlab sweep -e quickstart`, four ways: median pruning or none, caches on or off.
- knobs: channels_last, torch.compile and torch threads on the 224 px EfficientNet-Lite0 training step; 100
  MLflow metrics logged one call each against one log_batch.

Datasets are fetched on first use (set FRUITLAB_DATA_MIRROR to a folder of archives to copy them from there). Runs,
checkpoints and models go to a temporary folder; only --out is written. Torch uses its default thread count
unless a row says otherwise. Timings are only comparable on a quiet machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import pty
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fruitlab.config import PACKAGED_EXPERIMENTS, DataConfig, Experiment, load_experiment
from fruitlab.names import best_key

ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_YAML = ROOT / "benchmarks" / "overhead.yaml"
HANDLOOP = ROOT / "benchmarks" / "handloop.py"
FRUITLAB = str(Path(sys.executable).with_name("fruitlab"))  # the venv's console script
VAL_ACC = best_key("val/class/acc")  # the best checkpoint's val accuracy (overhead's `base` side may log it as
# best/val/class/acc: a checkout from before the rename; val_acc() reads either)


def val_acc(run: Any) -> float:
    from fruitlab.tracking.metric_names import metric

    found = metric(run, VAL_ACC)
    if found is None:
        raise SystemExit(f"run {run.info.run_id} logged no {VAL_ACC}")
    return found


@dataclass(frozen=True)
class Sizes:
    repeats: int  # overhead: runs per side
    overrides: tuple[str, ...]  # overhead: --set for both sides
    loader_batches: int  # timed batches per loader measurement (after the first, which starts workers)
    steps: int  # timed training steps per model measurement
    warmup: int  # untimed steps before them
    predict_images: int  # latency samples; images per throughput measurement
    cli_images: int
    cli_repeats: int
    sweep_trials: int = 4  # sweep: trials per study


FULL = Sizes(3, (), loader_batches=30, steps=10, warmup=2, predict_images=128, cli_images=50, cli_repeats=3)
QUICK = Sizes(
    1,
    ("data.max_per_class=4",),
    loader_batches=2,
    steps=2,
    warmup=1,
    predict_images=8,
    cli_images=50,
    cli_repeats=1,
    sweep_trials=2,
)
FEATURE_YAML = ROOT / "benchmarks" / "feature_cache.yaml"
# sweep: quickstart reduced to 40 photos per class and split at 96 px, so that four studies fit in ~10 minutes
SWEEP_SETS = ("data.max_per_class=40", "preprocess.input_size=96")


# ------------------------------------------------------------------------------------------------ overhead
OVERHEAD_KEYS = ("wall_s", "cpu_s", "first_step_s", "total_s", "outside_s", "setup_s", "train_s", "final_s")


def overhead(sizes: Sizes, args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="fruitlab-bench-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        warm_up(OVERHEAD_YAML, sizes.overrides, uri)
        sets = [arg for item in sizes.overrides for arg in ("--set", item)]
        env = os.environ | {"MLFLOW_TRACKING_URI": uri, "TERM": "xterm-256color"}
        fit = [FRUITLAB, "fit", "-e", str(OVERHEAD_YAML), *sets]
        sides = {
            "fit": (fit, env),
            "hand": ([sys.executable, str(HANDLOOP), "-e", str(OVERHEAD_YAML), *sets, "--out", str(tmp / "hand")], env),
        }
        if args.baseline_src:  # the same fit command with another checkout's fruitlab first on the path
            sides["base"] = (fit, env | {"PYTHONPATH": str(Path(args.baseline_src).resolve() / "src")})
        runs = []
        for repeat in range(sizes.repeats):
            order = list(sides)[repeat % len(sides) :] + list(sides)[: repeat % len(sides)]  # each side leads once
            for side in order:
                runs.append(overhead_run(side, *sides[side], tmp, uri) | {"repeat": repeat + 1})
        trial_lines = sweep_trial_cost(sizes, tmp, uri, runs, args.sweep_trials) if args.sweep_trials else []

    base = (
        f" `base` is the same fit command with `{args.baseline_src}/src` first on PYTHONPATH."
        if "base" in sides
        else ""
    )
    lines = [
        f"`fruitlab fit -e benchmarks/overhead.yaml` against `benchmarks/handloop.py` on the same file"
        f"{' with ' + ', '.join(f'`--set {s}`' for s in sizes.overrides) if sizes.overrides else ''}: "
        "each a whole process in a pseudo-terminal, in rotating order (each side first once per round), one shared "
        "MLflow SQLite store (created beforehand), dataset scanned beforehand. CPU = user + system time of the "
        "process and its loader workers (wait4); peak = the largest resident set of one of them (ru_maxrss). "
        "First step = from the process start to the first training batch (fit: the MLflow timestamp of its "
        "`first_step_seconds` metric; the hand loop prints the time). Inside = from the first line of "
        "fit()/main() to its end; outside = process wall minus inside (interpreter start, imports, CLI, exit). "
        "fit's split comes from its MLflow run: set-up = fit()'s start to the first batch (`first_step_seconds`; "
        "the CLI may have opened the run before fit() starts), training = from the first batch to the last epoch "
        "metric, finishing (best checkpoint, evaluation, reports, model logging) until the run ends; the hand "
        f"loop's set-up ends before its loop starts, its training is the loop.{base}",
    ]
    return [*lines, "", *overhead_table(runs, list(sides)), "", *trial_lines]


def overhead_run(side: str, command: list[str], env: dict[str, str], tmp: Path, uri: str) -> dict[str, Any]:
    cwd = tmp / side
    cwd.mkdir(exist_ok=True)
    done = run_in_terminal(command, cwd, env)
    if done.status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.status}):\n{done.output[-3000:]}")
    inside = hand_report(done.output) if side == "hand" else fit_report(uri, OVERHEAD_YAML.stem)
    first_step = inside.pop("first_step_at") - done.started_at
    print(
        f"  {side}: {done.wall_s:.1f} s wall, {done.cpu_s:.1f} s CPU, first step at {first_step:.1f} s, "
        f"peak {done.peak_mib:,.0f} MiB",
        flush=True,
    )
    row = {"side": side, "wall_s": done.wall_s, "cpu_s": done.cpu_s, "first_step_s": first_step}
    return row | {"peak_mib": done.peak_mib, "outside_s": done.wall_s - inside["total_s"]} | inside


def overhead_table(runs: list[dict[str, Any]], sides: list[str]) -> list[str]:
    """Every run, the medians per side, the ratios of medians to the hand loop's, and the per-repeat ratios."""
    header = ["repeat", "side", "wall s", "CPU s", "first step s", "inside s", "outside s", "set-up s", "training s"]
    header += ["finishing s", "peak MiB", "val acc"]
    keys = (*OVERHEAD_KEYS, "peak_mib")

    def cells(r: dict[str, float]) -> list[str]:
        return [*(f"{r[k]:.1f}" for k in OVERHEAD_KEYS), f"{r['peak_mib']:,.0f}"]

    rows = [[r["repeat"], r["side"], *cells(r), f"{r['val_acc']:.4f}"] for r in runs]
    medians = {side: {k: statistics.median(r[k] for r in runs if r["side"] == side) for k in keys} for side in sides}
    rows += [["median", side, *cells(medians[side]), ""] for side in sides]
    fits = [side for side in sides if side != "hand"]
    for side in fits:
        rows.append(["ratio", f"{side} / hand", *(ratio(medians[side][k], medians["hand"][k], 3) for k in keys), ""])
    summary = []
    hand = {r["repeat"]: r for r in runs if r["side"] == "hand"}
    for side in fits:
        for name, key in (("wall", "wall_s"), ("CPU", "cpu_s")):
            v = [r[key] / hand[r["repeat"]][key] for r in runs if r["side"] == side]
            spread = f"min {min(v):.3f}, max {max(v):.3f}"
            summary.append(f"{name} {side} / hand per repeat: median {statistics.median(v):.3f} ({spread})")
        gap = medians[side]["first_step_s"] - medians["hand"]["first_step_s"]
        summary.append(f"{side}'s first training step {gap:+.1f} s from the hand loop's (medians)")
    accs = sorted({f"{r['val_acc']:.4f}" for r in runs})
    return [*table(header, rows), "", "; ".join(summary) + f". Val accuracy: {', '.join(accs)}."]


def sweep_trial_cost(sizes: Sizes, tmp: Path, uri: str, fits: list[dict[str, Any]], trials: int) -> list[str]:
    """A sweep's trials on the same settings as the fits above: what a trial costs beyond its training."""
    import optuna

    experiment = tmp / "overhead_sweep.yaml"  # its own MLflow experiment, so fit_report's runs stay apart
    seed = load_experiment(str(OVERHEAD_YAML), list(sizes.overrides)).seed
    space = {"sweep": {"trials": trials, "params": {"seed": {"type": "categorical", "choices": [seed]}}}}
    experiment.write_text(OVERHEAD_YAML.read_text() + "\n" + yaml_text(space))
    sets = [a for s in sizes.overrides for a in ("--set", s)]
    command = [FRUITLAB, "sweep", "-e", str(experiment), "--study", "overhead", *sets]
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "TERM": "xterm-256color"}
    (tmp / "sweep").mkdir()
    done = run_in_terminal(command, tmp / "sweep", env)
    if done.status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.status}):\n{done.output[-3000:]}")
    study = optuna.load_study(study_name="overhead", storage=f"sqlite:///{tmp / 'optuna.db'}")
    reports = trial_reports(uri, experiment.stem)
    rows = []
    for trial, report in zip(study.trials, reports, strict=True):
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        fixed = wall - report["train_s"]
        rows.append(
            [f"trial {trial.number}", f"{wall:.1f}", f"{report['first_step_s']:.1f}", f"{report['train_s']:.1f}"]
        )
        rows[-1] += [f"{report['final_s']:.1f}", f"{fixed:.1f}", f"{report['val_acc']:.4f}"]
    for r in (r for r in fits if r["side"] != "hand"):
        times = (r["wall_s"], r["first_step_s"], r["train_s"], r["final_s"], r["wall_s"] - r["train_s"])
        rows.append([f"{r['side']}, repeat {r['repeat']}", *(f"{t:.1f}" for t in times), f"{r['val_acc']:.4f}"])
    return [
        f"Sweep trials against fits of the same settings: `fruitlab sweep` over a copy of overhead.yaml with a "
        f"one-value search space (the experiment's own seed), {trials} trials, in one process ({done.wall_s:.0f} s "
        "wall). A trial runs without the progress bar and checkpoints on the sweep metric (val/class/acc), as every "
        "trial does. wall = the trial (Optuna's start to complete) or the fit process; first step = from fit()'s "
        "start (trial) or the process start (fit) to the first training batch; training = from the first batch to "
        "the last epoch metric; fixed = wall - training.",
        "",
        *table(["", "wall s", "first step s", "training s", "finishing s", "fixed s", "val acc"], rows),
    ]


def yaml_text(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def warm_up(experiment: Path, overrides: tuple[str, ...], uri: str) -> None:
    """What the first run alone would pay: the dataset scan (cached per file), the store's schema, and the page
    cache: every image file of the dataset, the backbone's weights and the installed code (a child process imports
    what fit imports), so that the side that happens to run first does not read them from disk for the others."""
    from mlflow.tracking import MlflowClient

    from fruitlab.data.registry import load_dataset
    from fruitlab.models.classifier import build_classifier

    exp = load_experiment(str(experiment), list(overrides))
    splits = load_dataset(exp.data, seed=exp.seed)
    for path in Path(splits.root).rglob("*"):
        if path.is_file():
            path.read_bytes()
    build_classifier(exp.model, exp.preprocess, splits.tasks, "model.backbone")  # reads the weights file
    imports = "import fruitlab.cli, fruitlab.training.fit, fruitlab.inference.model_format, mlflow.pyfunc"
    subprocess.run([sys.executable, "-c", imports], check=True)
    MlflowClient(uri).search_experiments()


@dataclass
class Finished:
    """A finished process: its wall time, exit status, output, and what wait4 said about it and its children."""

    wall_s: float
    status: int
    output: str
    started_at: float  # time.time() just before it was started
    cpu_s: float  # user + system, itself and the children it waited for (loader workers)
    peak_mib: float  # the largest resident set of itself or one of those children


def run_in_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> Finished:
    """A process whose stdout and stderr are a 120x40 pseudo-terminal, run to its end."""
    import fcntl
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    started_at, started = time.time(), time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, wait_status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    wall = time.perf_counter() - started
    os.close(parent)
    output = b"".join(chunks).decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    return Finished(wall, process.returncode, output, started_at, cpu, usage.ru_maxrss / 1024)


def fit_report(uri: str, experiment_name: str) -> dict[str, float]:
    """fit's own timings of its latest run, from MLflow: fit_seconds, the run's start and end, epoch metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    run = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time DESC"], max_results=1)[0]
    run_id, end = run.info.run_id, run.info.end_time / 1000
    trained = max(m.timestamp for key in ("train/loss", "val/loss") for m in client.get_metric_history(run_id, key))
    total = run.data.metrics["fit_seconds"]
    first = client.get_metric_history(run_id, "first_step_seconds")[0]
    return {
        "first_step_at": first.timestamp / 1000,
        "total_s": total,
        "setup_s": first.value,  # fit() start to the first batch (the run itself may have been opened earlier)
        "train_s": trained / 1000 - first.timestamp / 1000,
        "final_s": end - trained / 1000,
        "val_acc": val_acc(run),
    }


def trial_reports(uri: str, experiment_name: str) -> list[dict[str, float]]:
    """Per trial run of a study (in trial order): fit()'s start to its first step, training, finishing, val acc."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    found = client.search_runs([experiment.experiment_id], "tags.`fruitlab.trial_number` != ''")
    reports = []
    for run in sorted(found, key=lambda r: int(r.data.tags["fruitlab.trial_number"])):
        history = [m for key in ("train/loss", "val/loss") for m in client.get_metric_history(run.info.run_id, key)]
        trained = max(m.timestamp for m in history) / 1000
        first = client.get_metric_history(run.info.run_id, "first_step_seconds")[0]
        end = run.info.end_time / 1000
        reports.append(
            {
                "first_step_s": first.value,
                "train_s": trained - first.timestamp / 1000,
                "final_s": end - trained,
                "val_acc": val_acc(run),
            }
        )
    return reports


def hand_report(output: str) -> dict[str, float]:
    found = re.search(r"handloop (\{.*?\})", output)
    acc = re.search(r"best model: val loss \S+, val acc (\S+),", output)
    if not found or not acc:
        raise SystemExit(f"handloop.py printed no timings:\n{output[-3000:]}")
    return json.loads(found.group(1)) | {"val_acc": float(acc.group(1))}


# -------------------------------------------------------------------------------------------------- loader
@dataclass
class Case:
    """One experiment of the loader part and what was measured on it."""

    name: str
    label: str
    exp: Experiment
    splits: Any
    make: Callable[[], torch.nn.Module]
    preprocess: dict[str, Any]
    auto: int  # the workers fit uses here (num_workers: auto)
    loader: dict[str, tuple[float, float]] = field(default_factory=dict)  # row -> (images/s, first batch s)
    model: dict[int, tuple[float, float]] = field(default_factory=dict)  # threads -> (images/s, first step s)
    together: float = 0.0

    def step(self) -> TrainStep:
        return TrainStep(self.make(), self.exp.finetune.phases[-1].optimizer)

    def data(self, workers: int, image_cache: str | None = None) -> Any:
        """The DataModule as fit builds it (its image cache setting), with `workers` loader processes."""
        from fruitlab.data.datamodule import ImageDataModule

        cfg = self.exp.data.model_copy(update={"num_workers": workers})
        cache = image_cache or self.exp.performance.image_cache
        return ImageDataModule(self.splits, cfg, self.preprocess, seed=self.exp.seed, image_cache=cache)


def loader(sizes: Sizes, args: argparse.Namespace) -> list[str]:
    import cv2

    from fruitlab.data.datamodule import resolve_workers
    from fruitlab.data.registry import load_dataset

    # With OpenCV's thread pool running in this process (0 workers load here, the image cache is built here), a
    # worker forked later hung for good in cv2.setNumThreads(1) (datamodule._one_thread_per_worker). One thread here.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    threads = torch.get_num_threads()
    cases = []
    for name, label in (("vgg16_cifar10", "CIFAR-10 at 32 px"), ("quickstart", "fruit photos at 224 px")):
        exp = load_experiment(name)
        splits = load_dataset(exp.data, seed=exp.seed)
        model_cfg = exp.model.model_copy(update={"pretrained": False})  # weights do not change the speed
        make = model_factory(exp, model_cfg, splits.tasks)
        case = Case(name, label, exp, splits, make, make().preprocess, resolve_workers(exp.data.num_workers))
        case.data(0).dataset("train", augment=True)  # builds the image cache, if fit would use one, untimed
        cases.append(case)
    for case in cases:
        cache = case.exp.performance.image_cache
        for workers in (0, 1, 2):
            default = " (fit's default here)" if workers == case.auto else ""
            row = f"loader, {plural(workers, 'worker')}{default}, image_cache {cache}"
            case.loader[row] = loader_rate(case.data(workers), sizes)
        if cache != "off":
            case.loader[f"loader, {plural(case.auto, 'worker')}, image_cache off"] = loader_rate(
                case.data(case.auto, "off"), sizes
            )
        shape = (case.exp.data.batch_size, case.preprocess["input_size"], len(case.splits.classes))
        for n in sorted({threads, 1, 2}):
            with torch_threads(n):
                times = step_times(case.step(), *shape, sizes)
            case.model[n] = (shape[0] / statistics.median(times[sizes.warmup :]), times[0])
        case.together = trained_rate(case.data(case.auto), case.step(), sizes)
    cv2.setNumThreads(cv2_threads)

    lines = [
        f"Loader: fit's train DataLoader (ImageDataModule.train_dataloader() with the experiment's augmentation and "
        f"image cache setting), {sizes.loader_batches} batches after the first (which starts the workers); OpenCV "
        "set to 1 thread in this process (see the note in performance.py). Model: forward + backward + the "
        "experiment's optimizer on random tensors of the input shape, channels_last, all parameters training, "
        f"median of {sizes.steps} steps after {sizes.warmup}. Together: the loader feeding the model, "
        f"{sizes.loader_batches} batches after the first, workers as fit uses them. torch.get_num_threads() = "
        f"{threads} unless a row says otherwise.",
    ]
    for case in cases:
        rows = [[row, f"{rate:,.0f}", f"first batch {first:.1f} s"] for row, (rate, first) in case.loader.items()]
        for n, (rate, first) in case.model.items():
            rows.append([f"model training step, {plural(n, 'thread')}", f"{rate:,.0f}", f"first step {first:.2f} s"])
        fed = f"training: loader ({plural(case.auto, 'worker')}) feeding the model"
        rows.append([fed, f"{case.together:,.0f}", ""])
        model, data = case.model[threads][0], next(rate for row, (rate, _) in case.loader.items() if "default" in row)
        size, batch = case.preprocess["input_size"], case.exp.data.batch_size
        lines += [
            "",
            f"### {case.label}: `{case.name}` ({case.exp.model.backbone}, batch {batch}, {size} px, "
            f"{len(case.splits.splits['train'])} train images)",
            "",
            *table(["measurement", "images/s", ""], rows),
            "",
            f"Bound: {'the model' if model < data else 'the loader'} (model alone {model:,.0f} images/s with "
            f"{plural(threads, 'thread')}, loader alone {data:,.0f} with {plural(case.auto, 'worker')}; "
            f"together {case.together:,.0f}, as both share the cores).",
        ]
    return lines


def model_factory(exp: Experiment, model_cfg: Any, tasks: Any) -> Callable[[], torch.nn.Module]:
    from fruitlab.models.classifier import build_classifier

    return lambda: build_classifier(model_cfg, exp.preprocess, tasks)[0]


def loader_rate(data: Any, sizes: Sizes) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch)."""
    started = time.perf_counter()
    iterator = iter(data.train_dataloader())
    next(iterator)
    first = time.perf_counter() - started
    started = time.perf_counter()
    images = sum(len(next(iterator)[0]) for _ in range(sizes.loader_batches))
    rate = images / (time.perf_counter() - started)
    del iterator
    gc.collect()  # shuts the workers down before the next measurement
    return rate, first


def trained_rate(data: Any, step: TrainStep, sizes: Sizes) -> float:
    iterator = iter(data.train_dataloader())
    step(*next(iterator))
    started = time.perf_counter()
    images = 0
    for _ in range(sizes.loader_batches):
        batch, labels = next(iterator)
        step(batch, labels)
        images += len(batch)
    rate = images / (time.perf_counter() - started)
    del iterator
    gc.collect()
    return rate


class TrainStep:
    """forward + backward + optimizer step over every parameter: the work of one training batch."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, channels_last: bool = True, compiled: bool = False):
        from fruitlab.training.phases import make_optimizer

        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.train().to(memory_format=self.format)
        self.optimizer = make_optimizer(optimizer, [{"params": list(self.model.parameters())}])
        self.forward = torch.compile(self.model) if compiled else self.model

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        started = time.perf_counter()
        loss = F.cross_entropy(self.forward(images.contiguous(memory_format=self.format)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


def step_times(step: TrainStep, batch: int, size: int, classes: int, sizes: Sizes) -> list[float]:
    """Seconds per step on one random batch, warm-up steps first."""
    images, labels = torch.randn(batch, 3, size, size), torch.randint(classes, (batch,))
    return [step(images, labels) for _ in range(sizes.warmup + sizes.steps)]


@contextmanager
def fresh_compile_cache() -> Iterator[None]:
    """torch.compile's caches (Inductor, AOTAutograd) in an empty temporary folder, and none in memory."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # another torch: its own caches then
        yield
        return
    with fresh_cache():
        yield


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------- predict
def predict(sizes: Sizes, args: argparse.Namespace) -> list[str]:
    import mlflow

    from fruitlab.data.images import open_rgb
    from fruitlab.data.registry import load_dataset
    from fruitlab.inference.predict import load_predictor

    splits = load_dataset(DataConfig(dataset="fruits_fresh_rotten", split="dli"), seed=0)
    val = splits.splits["val"].items
    photos = val[:: max(1, len(val) // max(sizes.predict_images, sizes.cli_images))]
    with tempfile.TemporaryDirectory(prefix="fruitlab-bench-") as tmp:
        tmp = Path(tmp)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        model, how = args.model, f"`--model {args.model}`"
        if model is None:
            uri = f"sqlite:///{tmp / 'mlflow.db'}"
            model, how = log_tiny_model(tmp, uri), "a tiny fit of benchmarks/overhead.yaml at 224 px (1 epoch)"
        if uri:
            mlflow.set_tracking_uri(uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as the fruitlab command does
        started = time.perf_counter()
        predictor = load_predictor(model, uri=uri)
        loaded = time.perf_counter() - started
        for path in photos[:5]:  # warm-up
            list(predictor.predict([path], batch_size=1))
        latency = [seconds(lambda p=p: list(predictor.predict([p], batch_size=1))) for p in photos]
        framed = [predictor.transform(np.asarray(open_rgb(p, predictor.min_side))) for p in photos]
        forward = [seconds(lambda x=x: predictor.logits(x[None])) for x in framed]
        rows = [
            ["one image, predict() (decode, frame, forward)", ms(latency, 50), ms(latency, 95), ""],
            ["one image, forward alone (Predictor.logits)", ms(forward, 50), ms(forward, 95), ""],
        ]
        batch_photos = photos[: sizes.predict_images]
        for batch in (1, 8, 32):
            took = seconds(lambda b=batch: list(predictor.predict(batch_photos, batch_size=b)))
            rows.append([f"{len(batch_photos)} images, batch size {batch}", "", "", f"{len(batch_photos) / took:.1f}"])

        folder = tmp / "photos"
        folder.mkdir()
        copied = photos[: sizes.cli_images]
        for path in copied:
            shutil.copy(path, folder)
        command = [FRUITLAB, "predict", "--model", model, str(folder), *(["--tracking-uri", uri] if uri else [])]
        walls = []
        for _ in range(sizes.cli_repeats):
            started = time.perf_counter()
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    cli = ", ".join(f"{w:.1f}" for w in walls)
    return [
        f"Model: {how}; {predictor.preprocess['input_size']} px, device {predictor.device}, "
        f"{torch.get_num_threads()} torch threads; load_predictor took {loaded:.1f} s. Images: fruit val photos "
        f"(JPEG, decoded at reduced size as predict does). Latency over {len(photos)} images after 5 warm-up "
        "predictions.",
        "",
        *table(["", "p50 ms", "p95 ms", "images/s"], rows),
        "",
        f"`fruitlab predict --model ... <folder of {len(copied)} photos>` in a fresh process "
        f"(with the model download): {cli} s wall (median {statistics.median(walls):.1f} s).",
    ]


def log_tiny_model(tmp: Path, uri: str) -> str:
    """A model logged by a 1-epoch fit on 4 photos per class at 224 px; returns its URI."""
    overrides = [
        "data.max_per_class=4",
        "finetune.phases.0.epochs=1",
        "preprocess.input_size=224",
        "trainer.enable_progress_bar=false",
    ]
    command = [FRUITLAB, "fit", "-e", str(OVERHEAD_YAML), "--tracking-uri", uri]
    command += [arg for item in overrides for arg in ("--set", item)]
    done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
    found = re.search(r"^model (\S+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return found.group(1)


def seconds(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def ms(values: list[float], percentile: int) -> str:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"{1000 * cuts[percentile - 1]:.1f}"


# --------------------------------------------------------------------------------------------------- knobs
def knobs(sizes: Sizes, args: argparse.Namespace) -> list[str]:
    exp = load_experiment("quickstart")
    make = model_factory(exp, exp.model, [f"class{i}" for i in range(6)])
    size, batch = make().preprocess["input_size"], exp.data.batch_size
    optimizer = exp.finetune.phases[-1].optimizer
    threads = torch.get_num_threads()
    settings = [(f"fruitlab's default: channels_last, eager, {plural(threads, 'thread')}", True, threads, False)]
    settings.append(("channels_last off", False, threads, False))
    settings += [(plural(n, "thread"), True, n, False) for n in sorted({1, 2} - {threads})]
    settings.append(("torch.compile, empty compile cache", True, threads, True))
    settings.append(("torch.compile, compile caches warm", True, threads, True))
    rows, default = [], None
    with fresh_compile_cache():  # the first compile is a user's first: nothing from earlier runs on disk
        for label, channels_last, n, compiled in settings:
            if compiled:
                torch._dynamo.reset()  # else a second model of the same class reuses the compiled code in memory
            try:
                with torch_threads(n):
                    times = step_times(TrainStep(make(), optimizer, channels_last, compiled), batch, size, 6, sizes)
            except Exception as exc:  # torch.compile needs a C++ compiler; say what failed and go on
                rows.append([label, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "", "", "", ""])
                continue
            steady = statistics.median(times[sizes.warmup :])
            default = default or steady
            compile_s = f"{times[0] - steady:.1f}" if compiled else ""
            rows.append(
                [label, f"{steady:.3f}", f"{batch / steady:.1f}", ratio(default, steady), f"{times[0]:.1f}", compile_s]
            )
    single, batched = mlflow_logging()
    return [
        f"Training step of `{exp.model.backbone}` at {size} px, batch {batch}, {optimizer.name} over every "
        f"parameter, random tensors; median of {sizes.steps} steps after {sizes.warmup}; each row changes one "
        "setting from the first. compile s = first step - steady step (Dynamo + Inductor, forward and backward); "
        "the first compile starts from empty caches, the second (a new model, Dynamo reset) finds Inductor's and "
        "AOTAutograd's caches filled, as a second run would.",
        "",
        *table(["setting", "s per step", "images/s", "speed vs default", "first step s", "compile s"], rows),
        "",
        "MLflow, temporary SQLite store (schema created beforehand), 100 metrics into a fresh run, median of 3: "
        f"`MlflowClient.log_metric` one at a time {single:.3f} s, one `log_batch` {batched:.3f} s "
        f"({ratio(single, batched)} faster).",
    ]


def mlflow_logging(count: int = 100, rounds: int = 3) -> tuple[float, float]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="fruitlab-bench-") as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        experiment = client.create_experiment("bench", artifact_location=Path(tmp, "mlruns").as_uri())
        single, batched = [], []
        for _ in range(rounds):
            run = client.create_run(experiment).info.run_id
            single.append(seconds(lambda r=run: [client.log_metric(r, f"m{i}", float(i)) for i in range(count)]))
            run = client.create_run(experiment).info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{i}", float(i), now, 0) for i in range(count)]
            batched.append(seconds(lambda r=run, m=metrics: client.log_batch(r, metrics=m)))
    return statistics.median(single), statistics.median(batched)


# ------------------------------------------------------------------------------------------------ feature cache
def feature_cache(sizes: Sizes, args: argparse.Namespace) -> list[str]:
    """The frozen phase of quickstart (head only, no augmentation: the exact case) with the cache off and on."""
    with tempfile.TemporaryDirectory(prefix="fruitlab-bench-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        warm_up(FEATURE_YAML, sizes.overrides, uri)
        sets = [arg for item in sizes.overrides for arg in ("--set", item)]
        results = {}
        for mode in ("off", "auto"):
            env = os.environ | {"MLFLOW_TRACKING_URI": uri, "FRUITLAB_CACHE_DIR": str(tmp / f"cache-{mode}")}
            command = [FRUITLAB, "fit", "-e", str(FEATURE_YAML), *sets, "--set", f"performance.feature_cache={mode}"]
            (tmp / mode).mkdir()
            done = run_in_terminal(command, tmp / mode, env)
            if done.status != 0:
                raise SystemExit(f"{' '.join(command)} failed ({done.status}):\n{done.output[-3000:]}")
            wall = done.wall_s
            results[mode] = epoch_report(uri, FEATURE_YAML.stem) | {"wall_s": wall}
            print(f"  feature_cache={mode}: {wall:.1f} s wall, epochs {results[mode]['epoch_s']}", flush=True)
    off, on = results["off"], results["auto"]
    rows = []
    for i, (a, b) in enumerate(zip(off["epoch_s"], on["epoch_s"], strict=True)):
        rows.append([i + 1, f"{a:.1f}", f"{b:.2f}", ratio(a, b), f"{off['val_acc'][i]:.4f}", f"{on['val_acc'][i]:.4f}"])
    later = [i for i in range(1, len(off["epoch_s"]))]
    speedup = statistics.median(off["epoch_s"][i] / on["epoch_s"][i] for i in later) if later else float("nan")
    head = max(float((off["head"][k] - on["head"][k]).abs().max()) for k in off["head"])
    return [
        "`fruitlab fit -e benchmarks/feature_cache.yaml` (quickstart's data and frozen phase: EfficientNet-Lite0 at "
        "224 px, linear head, Adam 1e-3, no augmentation, so the cache is exact) with `performance.feature_cache` "
        "off, then on with an empty cache folder. Epoch 1 runs from the run's start to its end (the cached side "
        "computes the frozen backbone's output for every image there); later epochs from one epoch's end to the "
        "next, both from the MLflow metric timestamps.",
        "",
        *table(["epoch", "uncached s", "cached s", "speed-up", "uncached val acc", "cached val acc"], rows),
        "",
        f"Epochs after the first: {speedup:.0f}x faster (median). Whole process: {off['wall_s']:.0f} s uncached, "
        f"{on['wall_s']:.0f} s cached. Largest difference between the two runs' trained head weights (best "
        f"checkpoint): {head:.2g}.",
    ]


def epoch_report(uri: str, experiment_name: str) -> dict[str, Any]:
    """Per-epoch seconds and val accuracy of the latest run, and its best checkpoint's head weights."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    run = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time DESC"], max_results=1)[0]
    ends = sorted(m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val/loss"))
    acc = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val/class/acc"), key=lambda m: m.step)]
    starts = [run.info.start_time / 1000, *ends[:-1]]
    state = torch.load(run.data.tags["fruitlab.best_checkpoint"], map_location="cpu", weights_only=False)
    head = {k: v for k, v in state["state_dict"].items() if k.startswith("model.head.")}
    return {"epoch_s": [e - s for s, e in zip(starts, ends, strict=True)], "val_acc": acc, "head": head}


# ------------------------------------------------------------------------------------------------ sweep
def sweep(sizes: Sizes, args: argparse.Namespace) -> list[str]:
    """`fruitlab sweep -e quickstart`, reduced, with and without pruning and with and without the caches."""
    import optuna

    rows = []
    with tempfile.TemporaryDirectory(prefix="fruitlab-bench-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        quickstart = PACKAGED_EXPERIMENTS / "quickstart.yaml"
        warm_up(quickstart, SWEEP_SETS, uri)
        for pruner in ("median", "none"):
            for caches in ("auto", "off"):
                study = f"bench-{pruner}-{caches}"
                sets = [*SWEEP_SETS, f"sweep.pruner={pruner}"]
                sets += [f"performance.feature_cache={caches}", f"performance.image_cache={caches}"]
                env = os.environ | {"MLFLOW_TRACKING_URI": uri, "FRUITLAB_CACHE_DIR": str(tmp / f"cache-{study}")}
                command = [FRUITLAB, "sweep", "-e", str(quickstart), "--trials", str(sizes.sweep_trials)]
                command += ["--study", study, *[a for s in sets for a in ("--set", s)]]
                (tmp / study).mkdir()
                done = run_in_terminal(command, tmp / study, env)
                wall = done.wall_s
                if done.status != 0:
                    raise SystemExit(f"{' '.join(command)} failed ({done.status}):\n{done.output[-3000:]}")
                trials = optuna.load_study(study_name=study, storage=f"sqlite:///{tmp / 'optuna.db'}").trials
                pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
                epochs = sum(len(t.intermediate_values) for t in trials)
                best = max((t.value for t in trials if t.value is not None), default=float("nan"))
                rows.append([pruner, caches, f"{wall:.0f}", len(trials), pruned, epochs, f"{best:.4f}"])
                print(f"  {study}: {wall:.0f} s, {pruned} pruned, best {best:.4f}", flush=True)
    base = float(rows[-1][2])
    for row in rows:
        row.insert(3, ratio(base, float(row[2])))
    return [
        f"`fruitlab sweep -e quickstart --trials {sizes.sweep_trials}` with "
        + ", ".join(f"`--set {s}`" for s in SWEEP_SETS)
        + " (a reduced quickstart), TPE seed 42, the same study four ways: median pruning or none, caches (feature "
        "and image) on with an empty cache folder, or off. Wall time of the whole command.",
        "",
        *table(
            [
                "pruner",
                "caches",
                "wall s",
                "speed-up vs none/off",
                "trials",
                "pruned",
                "epochs trained",
                "best val acc",
            ],
            rows,
        ),
    ]


# -------------------------------------------------------------------------------------------------- report
PARTS = {
    "feature_cache": ("Feature cache: a frozen phase with and without it", feature_cache),
    "overhead": ("Overhead: `fruitlab fit` against a hand-written PyTorch loop", overhead),
    "loader": ("Loader against model: what bounds training", loader),
    "predict": ("Prediction: latency and throughput", predict),
    "sweep": ("Sweep: pruning and caches", sweep),
    "knobs": ("Speed knobs, measured", knobs),
}


def machine() -> str:
    import lightning
    import timm

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln), cpu)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {ram:.1f} GiB RAM, {gpu}; "
        f"torch {torch.__version__}, timm {timm.__version__}, lightning {lightning.__version__}, "
        f"python {platform.python_version()}, fruitlab {commit}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load}"
    )


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}x" if b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["all", *PARTS], help="what to measure")
    parser.add_argument("--out", type=Path, help="write the results (markdown) here")
    parser.add_argument("--quick", action="store_true", help="tiny settings: proves it runs, measures nothing")
    parser.add_argument("--repeats", type=int, help="overhead: runs per side (default 3; --quick: 1)")
    parser.add_argument("--baseline-src", help="overhead: also run fit from this checkout (its src/), as `base`")
    parser.add_argument("--sweep-trials", type=int, default=2, help="overhead: trials of the sweep part (0: none)")
    parser.add_argument("--model", help="predict: a logged model (as `fruitlab predict --model`); default: fit one")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)

    title = "# fruitlab performance" + (" (--quick: tiny settings, not measurements)" if args.quick else "")
    command = "python benchmarks/performance.py " + " ".join(sys.argv[1:])
    sections = [title, "", f"Written by `{command}`."]
    for part in PARTS if args.part == "all" else [args.part]:
        heading, measure = PARTS[part]
        print(f"== {part}", flush=True)
        started = time.perf_counter()
        header = machine()
        body = measure(sizes, args)
        took = time.perf_counter() - started
        section = ["", f"## {heading}", "", header, "", *body, "", f"({part}: {took:.0f} s in all)"]
        print("\n".join(section), flush=True)
        sections += section
        if args.out:  # after every part, so a late failure keeps what was measured
            args.out.write_text("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
