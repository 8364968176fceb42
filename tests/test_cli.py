"""The `fruitlab` command as a user runs it: exit codes and messages, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SMOKE_EXPERIMENT, write_experiment

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


def test_unknown_experiment():
    assert_clean_error(run("fit", "-e", "quikstart"), "unknown experiment 'quikstart'", "did you mean 'quickstart'")


def test_unknown_key():
    assert_clean_error(
        run("fit", "-e", "quickstart", "--set", "data.batchsize=8"),
        "experiments/quickstart.yaml",
        "data.batchsize: unknown key",
        "did you mean 'batch_size'",
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
    exp = write_experiment(tmp_path / "folder.yaml", SMOKE_EXPERIMENT.replace("fruits_fresh_rotten", "image_folder"))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = run(
        "fit", "-e", str(exp), "--set", f"data.root={root}", "--set", "data.val_fraction=0.25", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.jpg" in result.stderr + result.stdout
    assert "1 " in result.stderr + result.stdout  # the warning counts the skipped files
    assert "run " in result.stdout and "best/val/class/acc" in result.stdout


def test_data_fetch_from_mirror(tmp_path, mirror):
    result = run("data", "fetch", "fruits_fresh_rotten", "--data-dir", str(tmp_path), "--mirror", str(mirror))
    assert result.returncode == 0, result.stderr
    assert "ready at" in result.stdout
    again = run("data", "fetch", "fruits_fresh_rotten", "--data-dir", str(tmp_path), "--mirror", str(mirror))
    assert again.returncode == 0 and "ready at" in again.stdout
