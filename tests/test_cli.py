"""The `fruitlab` command as a user runs it: exit codes and messages, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FOLDER_SMOKE_EXPERIMENT, REPO, SMOKE_EXPERIMENT, sigint_default, write_experiment

FRUITLAB = str(Path(sys.executable).with_name("fruitlab"))


def run(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([FRUITLAB, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_help_and_listing():
    assert run("--help").returncode == 0
    listing = run("experiments")
    assert listing.returncode == 0
    assert "quickstart" in listing.stdout and "finetune_vgg16" in listing.stdout


def test_data_dir_help_names_the_real_default(monkeypatch):
    from fruitlab.data.fetch import DATA_DIR_ENV, resolve_data_dir

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    real = "~/" + resolve_data_dir(None).relative_to(Path.home()).as_posix()
    help_text = " ".join(run("fit", "--help", env={"COLUMNS": "250"}).stdout.split())
    assert f"(default: ${DATA_DIR_ENV}, else {real})" in help_text, help_text


def test_the_packaged_experiments_are_listed_from_any_folder(tmp_path):
    listing = run("experiments", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:2] == ["quickstart", "packaged"] for line in listing.stdout.splitlines()), listing.stdout
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text("description: my own quickstart\n")
    shadowed = run("experiments", cwd=tmp_path)
    assert "./experiments (overrides packaged)  my own quickstart" in shadowed.stdout, shadowed.stdout
    assert "finetune_vgg16" in shadowed.stdout and str(tmp_path / "experiments") in shadowed.stderr


@pytest.mark.smoke
def test_fit_a_packaged_experiment_outside_the_repo(tmp_path, fruit_data_dir):
    """`fruitlab fit -e quickstart` in an empty folder: the packaged file, sized down to a tiny model."""
    tiny = ["model.backbone=test_efficientnet", "model.pretrained=false", "data.max_per_class=4", "data.split=dli"]
    tiny += ["preprocess.input_size=64", "finetune.phases.0.epochs=1", "finetune.phases.1.epochs=1"]
    tiny += ["data.num_workers=0", "trainer.enable_progress_bar=false"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "FRUITLAB_DATA_DIR": str(fruit_data_dir)}
    result = run("fit", "-e", "quickstart", *[f"--set={item}" for item in tiny], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "experiment 'quickstart'" in result.stderr and "val_best/class/acc" in result.stdout
    # The run was opened by the CLI's child while the parent imported Lightning (training/run_start.py): one run,
    # finished, with the tags known before the model and the weights' source logged after the first epoch.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run_,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert run_.info.status == "FINISHED" and run_.info.run_name == f"quickstart-{run_.info.run_id[:8]}"
    assert run_.data.tags["fruitlab.weights"] == "random init" and run_.data.tags["fruitlab.split"] == "dli"
    assert run_.data.tags["fruitlab.backbone"] == "test_efficientnet" and run_.data.metrics["first_step_seconds"] > 0
    assert run_.info.run_id in result.stdout


@pytest.mark.smoke
def test_init_writes_a_file_that_check_accepts_and_fit_runs(tmp_path):
    """`fruitlab init FOLDER` on real photos, then `check` and a (tiny) `fit` by the name it printed."""
    from mlflow.tracking import MlflowClient
    from skimage import data

    rng = np.random.default_rng(0)
    for cls, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(6):
            y, x = rng.integers(0, 100, size=2)
            Image.fromarray(image[y : y + 200, x : x + 200]).save(tmp_path / "photos" / cls / f"{i}.jpg")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "FRUITLAB_DATA_DIR": str(tmp_path / "cache")}
    init = run("init", "photos", cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stderr
    assert "wrote experiments/photos.yaml: 2 classes" in init.stdout and "fruitlab fit -e photos" in init.stdout
    assert_clean_error(run("init", "photos", cwd=tmp_path, env=env), "experiments/photos.yaml exists", "--force")
    check = run("check", "-e", "photos", cwd=tmp_path, env=env)
    assert check.returncode == 0 and check.stdout.startswith("ok: photos"), check.stderr

    tiny = ["model.backbone=test_efficientnet", "model.pretrained=false", "preprocess.input_size=64"]
    tiny += ["finetune.phases.0.epochs=1", "finetune.phases.1.epochs=1", "data.num_workers=0"]
    fit = run("fit", "-e", "photos", *[f"--set={item}" for item in tiny], cwd=tmp_path, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert experiment.name == "photos"  # the folder's own MLflow experiment, not the fruit demo's
    (finished,) = client.search_runs([experiment.experiment_id])
    assert finished.info.status == "FINISHED" and "val_best/class/acc" in finished.data.metrics


def test_unknown_experiment(tmp_path):
    assert_clean_error(
        run("fit", "-e", "quikstart", cwd=tmp_path),
        "unknown experiment 'quikstart'",
        "did you mean 'quickstart'",
        "finetune_vgg16",  # the known names
        f"looked in {tmp_path / 'experiments'} and the packaged experiments",
    )


def test_unknown_key():
    assert_clean_error(
        run("fit", "-e", "quickstart", "--set", "data.batchsize=8"),
        "experiments/quickstart.yaml",
        "data.batchsize: unknown key",
        "did you mean 'batch_size'",
    )


def test_an_override_without_a_key():
    assert_clean_error(
        run("check", "-e", "quickstart", "--set", "=5"), "--set '=5': the key before '=' is empty", "data.batch_size=16"
    )


def test_misspelt_backbone_fails_before_any_data_or_weights():
    result = run("check", "-e", "quickstart", "--set", "model.backbone=efficientnet_lte0")
    assert_clean_error(result, "backbone 'efficientnet_lte0'", "model.backbone", "did you mean 'efficientnet_lite0'")
    assert_clean_error(
        run("fit", "-e", "quickstart", "--set", "model.backbone=convnxt_tiny"), "did you mean 'convnext_tiny'"
    )


def test_misspelt_dataset():
    assert_clean_error(
        run("check", "-e", "quickstart", "--set", "data.dataset=fruits_fresh_roten"), "fruits_fresh_rotten"
    )


def test_missing_data_folder(tmp_path):
    result = run(
        "fit",
        "-e",
        "quickstart",
        "--set",
        "data.dataset=image_folder",
        "--set",
        "data.split=null",
        "--set",
        f"data.root={tmp_path}/nope",
    )
    assert_clean_error(result, str(tmp_path / "nope"))


def test_check_accepts_every_shipped_experiment():
    for name in ("quickstart", "finetune_vgg16", "cifar10_resnet18"):
        result = run("check", "-e", name)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"ok: {name}")


@pytest.mark.smoke
def test_fit_with_an_unreachable_tracking_server_says_so_without_a_traceback(tmp_path, fruit_data_dir):
    """The run is opened by the CLI's child (training/run_start.py): its clear error reaches the user once."""
    import socket

    with socket.socket() as sock:  # a port of 127.0.0.1 nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_experiment(tmp_path / "tiny.yaml", SMOKE_EXPERIMENT)
    env = {"FRUITLAB_DATA_DIR": str(fruit_data_dir), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = run("fit", "-e", str(path), "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path, env=env)
    assert_clean_error(result, f"could not open a run in the tracking store 'http://127.0.0.1:{port}'", "server up")
    assert result.stderr.count("could not open a run") == 1


@pytest.mark.smoke
def test_fit_on_a_folder_with_a_corrupt_image_skips_it_with_a_warning(tmp_path, fruit_data_dir):
    """A user folder of real photos with one truncated JPEG: the fit runs and says which file it skipped."""
    from skimage import data

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            y, x = rng.integers(0, 100, size=2)
            Image.fromarray(image[y : y + 200, x : x + 200]).save(root / cls / f"{i}.jpg", quality=90)
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "broken.jpg").write_bytes(good[: len(good) // 3])
    exp = write_experiment(tmp_path / "folder.yaml", FOLDER_SMOKE_EXPERIMENT)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = run(
        "fit", "-e", str(exp), "--set", f"data.root={root}", "--set", "data.val_fraction=0.25", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.jpg" in result.stderr + result.stdout
    assert "1 " in result.stderr + result.stdout  # the warning counts the skipped files
    assert "run " in result.stdout and "val_best/class/acc" in result.stdout
    # what a fit prints and what it no longer does: Lightning's absent accelerators and its layer table with FLOPs
    out = result.stderr + result.stdout
    for noise in ("GPU available", "TPU available", "FLOPs", "Trainable params", "`Trainer.fit` stopped"):
        assert noise not in out, noise
    assert "phase 2/2 'top': " in result.stderr and " parameters train (backbone " in result.stderr
    assert result.stdout.count("precision") == 1  # the val per-class table, once


def test_data_fetch_from_mirror(tmp_path, mirror):
    result = run("data", "fetch", "fruits_fresh_rotten", "--data-dir", str(tmp_path), "--mirror", str(mirror))
    assert result.returncode == 0, result.stderr
    assert "ready at" in result.stdout
    again = run("data", "fetch", "fruits_fresh_rotten", "--data-dir", str(tmp_path), "--mirror", str(mirror))
    assert again.returncode == 0 and "ready at" in again.stdout


RESUME_EXPERIMENT = SMOKE_EXPERIMENT.replace("epochs: 1, train: none", "epochs: 2, train: none").replace(
    "epochs: 1, train: {last_stages: 2}", "epochs: 2, train: {last_stages: 2}"
)


def start_fit_until_first_checkpoint(tmp_path: Path, data_dir: Path) -> tuple[subprocess.Popen, dict, Path]:
    """A real `fruitlab fit` (4 epochs, tiny model, real photos) in a child process, returned still running once
    its first checkpoint is on disk: (process, its environment, the experiment file)."""
    import time

    exp = write_experiment(tmp_path / "resume.yaml", RESUME_EXPERIMENT)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "FRUITLAB_DATA_DIR": str(data_dir),
    }
    proc = subprocess.Popen(
        [FRUITLAB, "fit", "-e", str(exp)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    deadline = time.time() + 600  # a busy shared machine gives a niced test little CPU
    while not list(tmp_path.glob("checkpoints/*/last.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the fit ended before it could be interrupted"
    if not list(tmp_path.glob("checkpoints/*/last.ckpt")):
        proc.kill()
        pytest.fail("no checkpoint within 600 s")
    return proc, env, exp


def assert_resumed_to_the_end(client, run_id: str, resumed: subprocess.CompletedProcess) -> None:
    """One run, FINISHED, every epoch once (both phases), one model and one value per val_best/* metric."""
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run {run_id}" in resumed.stdout
    run_info = client.get_run(run_id)
    assert run_info.info.status == "FINISHED"
    assert len(client.search_runs([run_info.info.experiment_id])) == 1  # no second run
    val_epochs = [m.step for m in client.get_metric_history(run_id, "val/class/acc")]  # per-epoch: step = epoch
    assert sorted(val_epochs) == [1, 2, 3, 4], val_epochs  # every epoch once: none trained (and logged) twice
    assert [m.value for m in client.get_metric_history(run_id, "phase")][-1] == 1.0
    assert len(client.get_metric_history(run_id, "val_best/class/acc")) == 1
    models = client.search_logged_models([run_info.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(models) == 1


@pytest.mark.smoke
def test_interrupted_fit_resumes_in_the_same_run(tmp_path, fruit_data_dir):
    """Ctrl+C in the middle of a fit, then `fit --resume RUN_ID`: the same MLflow run finishes every epoch."""
    import signal

    from mlflow.tracking import MlflowClient

    proc, env, exp = start_fit_until_first_checkpoint(tmp_path, fruit_data_dir)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    run_id = next(tmp_path.glob("checkpoints/*")).name
    assert f"fruitlab fit --resume {run_id}" in err

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = run("fit", "--resume", run_id, cwd=tmp_path, env=env)
    assert_resumed_to_the_end(client, run_id, resumed)
    # The banner names the run's experiment and the phase the checkpoint restores, not phase 1 before the restore
    assert f"MLflow run {run_id}, experiment 'resume'" in resumed.stderr, resumed.stderr[-3000:]
    assert "resumed from the checkpoint in phase" in resumed.stderr
    assert "phase 1/2 'head': training" not in resumed.stderr.split("resumed from the checkpoint")[0]

    # A finished run is not trained again: refused, and the run keeps one model and one value per val_best/* metric
    end_time = client.get_run(run_id).info.end_time
    again = run("fit", "--resume", run_id, cwd=tmp_path, env=env)
    assert_clean_error(again, f"run {run_id} (experiment 'resume') is FINISHED", f"fruitlab fit -e {exp}")
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.info.end_time == end_time
    assert len(client.get_metric_history(run_id, "val_best/class/acc")) == 1


@pytest.mark.slow
def test_a_fit_killed_with_sigkill_resumes_in_the_same_run(tmp_path, fruit_data_dir):
    """kill -9 after the first checkpoint: no handler runs, the run stays RUNNING; --resume finishes it."""
    import signal

    from mlflow.tracking import MlflowClient

    proc, env, _ = start_fit_until_first_checkpoint(tmp_path, fruit_data_dir)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_id = next(tmp_path.glob("checkpoints/*")).name

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody marked it: the process died at once
    assert not client.get_metric_history(run_id, "val_best/class/acc")
    resumed = run("fit", "--resume", run_id, cwd=tmp_path, env=env)
    assert_resumed_to_the_end(client, run_id, resumed)
    assert "resumed from the checkpoint in phase" in resumed.stderr


def test_resuming_a_finished_run_is_refused_before_anything_loads(tmp_path):
    """No config artifact, no checkpoint, no data: the run's status alone refuses it, in a second or two."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("fruity", artifact_location=(tmp_path / "mlruns").as_uri())
    run_id = client.create_run(experiment_id, tags={"fruitlab.experiment_file": "experiments/fruity.yaml"}).info.run_id
    client.set_terminated(run_id, "FINISHED")
    result = run("fit", "--resume", run_id, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert_clean_error(
        result,
        f"run {run_id} (experiment 'fruity') is FINISHED",
        "nothing to resume",
        "fruitlab fit -e experiments/fruity.yaml",
    )
    assert client.get_run(run_id).info.status == "FINISHED"
    unknown = run("fit", "--resume", "0" * 32, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert_clean_error(unknown, f"run '{'0' * 32}' is not in the tracking store")


# Runs the `fruitlab` entry point and, however it ends, prints which heavy libraries it had imported by then.
IMPORTED_PROBE = """
import sys
from fruitlab.cli import main
sys.argv = ["fruitlab", *sys.argv[1:]]
try:
    main()
finally:
    print("imported:", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "timm", "mlflow"}))
"""


def test_fit_on_one_class_is_refused_before_the_training_stack_is_imported(tmp_path):
    from skimage import data

    (tmp_path / "photos" / "cat").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(data.chelsea()[i * 20 : i * 20 + 200, :200]).save(tmp_path / "photos" / "cat" / f"{i}.jpg")
    exp = write_experiment(tmp_path / "one.yaml", FOLDER_SMOKE_EXPERIMENT)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "FRUITLAB_DATA_DIR": str(tmp_path / "cache"),
    }
    args = ["fit", "-e", str(exp), "--set", f"data.root={tmp_path / 'photos'}"]
    result = subprocess.run(
        [sys.executable, "-c", IMPORTED_PROBE, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert_clean_error(result, "classification needs at least 2 classes; found 1 ('cat', 3 images in ")
    assert "imported: []" in result.stdout, result.stdout  # no torch, Lightning, timm or MLflow yet
    assert not (tmp_path / "mlflow.db").exists()  # refused before a run was opened
    assert_clean_error(run(*args, cwd=tmp_path, env=env), "classification needs at least 2 classes")  # the real command
