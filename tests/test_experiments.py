"""Every shipped experiment file runs a real training step: real architecture, real images, every phase.

Sizes shrink (a few images, a small input, one batch per phase) and hub weights are off (no downloads here);
everything else - backbone, head, phases, optimizers, schedules, labels, augmentation - is the file's own.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fruitlab.config import PACKAGED_EXPERIMENTS, list_experiments, load_experiment
from fruitlab.training.fit import fit
from tests.data.helpers import write_cifar_batches

EXPERIMENTS = sorted(list_experiments(PACKAGED_EXPERIMENTS))
OFFLINE_WEIGHTS = {"efficientnet_lite0", "tf_efficientnet_lite0"}  # real pretrained weights without a download
MIN_SIZE = {"inception_v3": 75}  # below this the architecture's own strides leave no feature map


@pytest.fixture(scope="module")
def fruit_folder(tmp_path_factory, fruit_data_dir) -> Path:
    """A user folder (train/ and test/) of a few real fruit photos per class, for image_folder experiments."""
    root = tmp_path_factory.mktemp("user_folder")
    source = next(fruit_data_dir.rglob("fruits-fresh-rotten"))
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("freshapples", "rottenbanana", "freshoranges"):
            (root / split / cls).mkdir(parents=True)
            for photo in sorted((source / split / cls).iterdir())[:n]:
                shutil.copy(photo, root / split / cls / photo.name)
    return root


@pytest.mark.smoke
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_a_real_training_step(name, tmp_path, monkeypatch, fruit_data_dir, fruit_folder):
    exp = load_experiment(name, directory=PACKAGED_EXPERIMENTS)
    size = max(MIN_SIZE.get(exp.model.backbone.split(".")[0], 0), 32 if exp.data.dataset == "cifar10" else 64)
    overrides = [
        f"preprocess.input_size={size}",
        "data.max_per_class=2",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "tracking.log_model=false",
    ]
    overrides += [f"finetune.phases.{i}.epochs=1" for i in range(len(exp.finetune.phases))]
    if exp.model.backbone not in OFFLINE_WEIGHTS:
        overrides.append("model.pretrained=false")
    if exp.data.dataset == "cifar10":
        write_cifar_batches(tmp_path / "cifar-10-batches-py", train_per_class=3, test_per_class=2)
        overrides.append(f"data.root={tmp_path / 'cifar-10-batches-py'}")
    if exp.data.dataset == "image_folder":
        overrides.append(f"data.root={fruit_folder}")
    exp = load_experiment(name, overrides, directory=PACKAGED_EXPERIMENTS)

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = fit(exp, data_dir=str(fruit_data_dir))

    client = MlflowClient(uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    phases = [m.value for m in client.get_metric_history(result.run_id, "phase")]
    assert phases == [float(i) for i in range(len(exp.finetune.phases))]  # every phase ran, in order
    losses = client.get_metric_history(result.run_id, "train/loss")
    assert losses and all(math.isfinite(m.value) for m in losses)
    task = "fruit" if exp.model.heads else "class"
    assert f"val_best/{task}/acc" in result.metrics
