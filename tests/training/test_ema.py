"""Weight averaging (finetune.ema): the averaged weights are what validation, the checkpoint and the model use."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch.nn import functional as F

from fruitlab.config import PhaseConfig, load_experiment
from fruitlab.inference.predict import load_predictor
from fruitlab.training.fit import fit
from tests.conftest import SMOKE_EXPERIMENT, write_experiment
from tests.training.test_phases import datamodule, make_module, make_trainer


class RawWeights(Callback):
    """Keeps the weights the optimizer produced, at the end of training (before EMA copies its average in)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


def val_loss(model: torch.nn.Module, loader) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for images, labels in loader:
            total += F.cross_entropy(model(images), labels, reduction="sum").item()
            n += len(labels)
    return total / n


def test_validation_sees_the_averaged_weights(tmp_path, photo_splits):
    """The val loss Lightning logged is the averaged model's, not the raw weights'; after fit the model holds them."""
    L.seed_everything(0)
    fast = [PhaseConfig(name="head", epochs=2, train="none", optimizer={"lr": 3e-2})]  # big steps: a clear gap
    module = make_module(photo_splits.classes, fast)
    raw = RawWeights()
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[raw, EMAWeightAveraging(decay=0.6)])
    dm = datamodule(photo_splits, module)
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics["val/loss"].item()
    loader = dm.val_dataloader()

    averaged = val_loss(module.model, loader)
    module.model.load_state_dict(raw.state)
    plain = val_loss(module.model, loader)
    assert logged == pytest.approx(averaged, abs=1e-5)
    assert abs(plain - averaged) > 1e-3  # the average is not the raw weights


@pytest.mark.smoke
def test_fit_with_ema_checkpoints_and_logs_the_averaged_weights(tmp_path, fruit_data_dir, mlflow_uri):
    exp = load_experiment(
        str(write_experiment(tmp_path / "smoke.yaml", SMOKE_EXPERIMENT)), ["finetune.ema={decay: 0.6}"]
    )
    result = fit(exp, data_dir=str(fruit_data_dir))
    best = next((tmp_path / "checkpoints" / result.run_id).glob("best-*.ckpt"))
    state = torch.load(best, map_location="cpu", weights_only=True)
    averaged = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    current = {k.removeprefix("model."): v for k, v in state["current_model_state"].items() if k.startswith("model.")}
    head = [k for k in averaged if k.startswith("head.")]
    assert head and any(not torch.equal(averaged[k], current[k]) for k in head)  # the average moved differently

    logged = load_predictor(result.model_uri, device="cpu", uri=mlflow_uri).model.state_dict()
    for key in head:
        assert torch.allclose(logged[key], averaged[key], atol=1e-6), key
    assert result.metrics["val_best/class/acc"] >= 0.0
