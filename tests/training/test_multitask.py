"""Multi-task models: labels per task from the data, loss combinations, per-task metrics and artifacts, a real fit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fruitlab.config import DataConfig, LabelsConfig, LossConfig, ModelConfig, PreprocessConfig, load_experiment
from fruitlab.data.labels import derive_task_labels
from fruitlab.data.registry import load_dataset
from fruitlab.errors import ConfigError, DataError, ModelError
from fruitlab.models.classifier import build_classifier
from fruitlab.training.fit import fit
from fruitlab.training.losses import TaskLoss
from tests.conftest import SMOKE_EXPERIMENT, write_experiment
from tests.data.helpers import make_class_tree

FRUIT_CLASSES = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]
FRUIT_LABELS = LabelsConfig(
    source="class_name",
    pattern=r"^(?P<freshness>fresh|rotten)(?P<fruit>.+)$",
    rename={"fruit": {"apples": "apple", "oranges": "orange"}},
)


def _splits(labels: dict[str, list[int]]) -> dict[str, SimpleNamespace]:
    return {s: SimpleNamespace(items=[f"{s}{i}" for i in range(len(v))], labels=v) for s, v in labels.items()}


# ------------------------------------------------------------------------------------------------- labels
def test_labels_parsed_from_class_names_with_renames():
    got = derive_task_labels(FRUIT_LABELS, FRUIT_CLASSES, _splits({"train": [0, 4, 5], "val": [3]}), "/")
    assert got.tasks == {"freshness": ["fresh", "rotten"], "fruit": ["apple", "banana", "orange"]}
    assert got.targets["train"] == {"freshness": [0, 1, 1], "fruit": [0, 1, 2]}
    assert got.targets["val"] == {"freshness": [1], "fruit": [0]}


def test_class_name_pattern_errors_name_the_class_and_the_fix():
    bad = LabelsConfig(source="class_name", pattern=r"^(?P<freshness>fresh|rotten)(?P<fruit>.+)$")
    with pytest.raises(DataError, match=r"class 'mouldyapples' does not match data\.labels\.pattern"):
        derive_task_labels(bad, ["freshapples", "mouldyapples"], _splits({"train": [0, 1]}), "/")
    unnamed = LabelsConfig(source="class_name", pattern=r"^(fresh|rotten)")
    with pytest.raises(DataError, match="no named groups"):
        derive_task_labels(unnamed, ["freshapples"], _splits({"train": [0]}), "/")


def test_nested_folders_give_one_task_per_level(tmp_path):
    for split in ("train", "val"):
        make_class_tree(tmp_path / split / "apple", {"fresh": 2, "rotten": 2})
        make_class_tree(tmp_path / split / "banana", {"fresh": 2, "rotten": 1})
    cfg = DataConfig(
        dataset="image_folder", root=str(tmp_path), labels=LabelsConfig(source="nested", tasks=["fruit", "freshness"])
    )
    splits = load_dataset(cfg, seed=0, data_dir=tmp_path / "cache")
    assert splits.classes == ["apple/fresh", "apple/rotten", "banana/fresh", "banana/rotten"]
    assert splits.tasks == {"fruit": ["apple", "banana"], "freshness": ["fresh", "rotten"]}
    train = splits.splits["train"]
    assert train.targets["fruit"] == [0, 0, 0, 0, 1, 1, 1]
    assert train.targets["freshness"] == [0, 0, 1, 1, 0, 0, 1]
    assert splits.multitask


def test_labels_from_a_csv(tmp_path):
    paths = make_class_tree(tmp_path / "train", {"a": 3, "b": 3})
    rows = ["path,fruit,freshness"] + [
        f"{p.relative_to(tmp_path)},{'apple' if i % 2 else 'pear'},{'fresh' if i < 3 else 'rotten'}"
        for i, p in enumerate(paths)
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(dataset="image_folder", root=str(tmp_path), labels=LabelsConfig(source="csv", csv="labels.csv"))
    splits = load_dataset(cfg, seed=0, data_dir=tmp_path / "cache")
    assert splits.tasks == {"fruit": ["apple", "pear"], "freshness": ["fresh", "rotten"]}
    every = {
        p: (t_fruit, t_fresh)
        for s in splits.splits.values()
        for p, t_fruit, t_fresh in zip(s.items, s.targets["fruit"], s.targets["freshness"], strict=True)
    }
    for i, p in enumerate(paths):
        assert every[str(p)] == (0 if i % 2 else 1, 0 if i < 3 else 1)
    (tmp_path / "labels.csv").write_text("\n".join(rows[:-1]) + "\n")  # one image without a row
    with pytest.raises(DataError, match="have no row or an empty label"):
        load_dataset(cfg, seed=0, data_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------- loss
def _losses() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    logits = {"fruit": torch.randn(8, 3, generator=gen), "freshness": torch.randn(8, 2, generator=gen)}
    labels = {"fruit": torch.randint(0, 3, (8,), generator=gen), "freshness": torch.randint(0, 2, (8,), generator=gen)}
    return logits, labels


def test_sum_and_fixed_weights():
    logits, labels = _losses()
    plain = TaskLoss(["fruit", "freshness"])
    per_task = plain.per_task(logits, labels)
    assert plain.combine_losses(per_task) == pytest.approx(float(per_task["fruit"] + per_task["freshness"]))
    weighted = TaskLoss(["fruit", "freshness"], LossConfig(combine="weights", weights={"fruit": 2.0, "freshness": 0.5}))
    expected = 2.0 * per_task["fruit"] + 0.5 * per_task["freshness"]
    assert weighted.combine_losses(per_task) == pytest.approx(float(expected))
    assert weighted.weights() == {"fruit": 2.0, "freshness": 0.5}
    with pytest.raises(ConfigError, match=r"missing: \['freshness'\]"):
        TaskLoss(["fruit", "freshness"], LossConfig(combine="weights", weights={"fruit": 1.0}))


def test_mixed_batches_weigh_both_targets_per_task():
    logits, labels = _losses()
    loss = TaskLoss(["fruit", "freshness"])
    perm = torch.arange(8).flip(0)
    mixed = loss.per_task(logits, labels, perm, 0.7)
    for task in ("fruit", "freshness"):
        expected = 0.7 * torch.nn.functional.cross_entropy(logits[task], labels[task])
        expected += 0.3 * torch.nn.functional.cross_entropy(logits[task], labels[task][perm])
        assert mixed[task] == pytest.approx(float(expected))


def test_uncertainty_weighting_learns_to_down_weight_the_noisier_task():
    """Kendall et al.: at the optimum exp(-s_t) = 1 / (2 L_t), so the task with the larger loss gets less weight."""
    loss = TaskLoss(["easy", "hard"], LossConfig(combine="uncertainty"))
    assert loss.weights() == {"easy": 1.0, "hard": 1.0}  # starts as the plain sum
    fixed = {"easy": torch.tensor(0.1), "hard": torch.tensor(2.0)}
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        loss.combine_losses(fixed).backward()
        opt.step()
    w = loss.weights()
    assert w["easy"] == pytest.approx(1 / (2 * 0.1), rel=0.02) and w["hard"] == pytest.approx(1 / (2 * 2.0), rel=0.02)


# -------------------------------------------------------------------------------------------------- model
def test_heads_must_match_the_data_tasks():
    cfg = ModelConfig(backbone="test_efficientnet", pretrained=False, heads={"fruit": {}, "freshnes": {}})
    tasks = {"fruit": ["apple"], "freshness": ["fresh", "rotten"]}
    with pytest.raises(ModelError, match=r"did you mean 'freshness'"):
        build_classifier(cfg, PreprocessConfig(input_size=32), tasks)
    with pytest.raises(ModelError, match=r"model\.heads is not set"):
        build_classifier(ModelConfig(backbone="test_efficientnet", pretrained=False), PreprocessConfig(), tasks)


def test_multitask_model_shares_an_mlp_and_returns_logits_per_task():
    cfg = ModelConfig(
        backbone="test_efficientnet",
        pretrained=False,
        shared={"hidden": [512], "dropout": 0.2},
        heads={"fruit": {}, "freshness": {"hidden": [16]}},
    )
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=32), {"fruit": list("abc"), "freshness": list("xy")})
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"fruit": (2, 3), "freshness": (2, 2)}
    assert model.head.shared[0].out_features == 512
    assert model.classes == {"fruit": ["a", "b", "c"], "freshness": ["x", "y"]}


# ------------------------------------------------------------------------------------------ a real fit
MULTITASK_SMOKE = (
    SMOKE_EXPERIMENT
    + """
loss: {combine: uncertainty}
"""
)


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory, fruit_data_dir):
    work = tmp_path_factory.mktemp("multitask")
    text = (
        MULTITASK_SMOKE.replace(
            "model: {backbone: test_efficientnet, pretrained: false}",
            "model:\n  backbone: test_efficientnet\n  pretrained: false\n  shared: {hidden: [32]}\n"
            "  heads: {fruit: {}, freshness: {}}",
        )
        .replace(
            "augment: {hflip: 0.5}",  # mixup/cutmix on every batch: the mixed loss must work for several tasks
            "augment: {hflip: 0.5, mixup: 0.4, cutmix: 1.0, mix_prob: 1.0}",
        )
        .replace(
            "  dataset: fruits_fresh_rotten\n",
            "  dataset: fruits_fresh_rotten\n  labels:\n    source: class_name\n"
            "    pattern: '^(?P<freshness>fresh|rotten)(?P<fruit>.+)$'\n"
            "    rename: {fruit: {apples: apple, oranges: orange}}\n",
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        exp = load_experiment(str(write_experiment(work / "multitask.yaml", text)))
        result = fit(exp, data_dir=str(fruit_data_dir))
    return result, uri


@pytest.mark.smoke
def test_multitask_fit_logs_per_task_curves_confusions_and_weights(multitask_run):
    result, uri = multitask_run
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in (
        "val/fruit/acc",
        "val/freshness/f1_macro",
        "val/joint/acc",
        "train/fruit/loss",
        "loss_weight/freshness",
    ):
        assert len(client.get_metric_history(result.run_id, key)) == 2, key  # one point per epoch
    # the learned weights moved away from 1 after the first epoch
    assert client.get_metric_history(result.run_id, "loss_weight/fruit")[-1].value != 1.0
    for key in ("val_best/fruit/acc", "val_best/freshness/f1_macro", "val_best/joint/acc"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/val_fruit_confusion.png", "evaluation/val_freshness_confusion.png"} <= artifacts
    assert {"evaluation/val_fruit_per_class.csv", "evaluation/val_report.json"} <= artifacts
    evaluation = result.reports["val"]
    assert evaluation["tasks"]["fruit"]["classes"] == ["apple", "banana", "orange"]
    fruit_right = evaluation["tasks"]["fruit"]["acc"]
    assert evaluation["joint_acc"] <= min(fruit_right, evaluation["tasks"]["freshness"]["acc"]) + 1e-9


@pytest.mark.smoke
def test_logged_multitask_model_predicts_every_task(multitask_run, tmp_path):
    result, uri = multitask_run
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(result.model_uri)  # what another team gets: no fruitlab import in their code
    out = model.predict(np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32))
    assert set(out) == {"fruit", "freshness"}
    probs = torch.from_numpy(out["freshness"]).softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(tmp_path)))
    spec = json.loads(next(local.rglob("spec.json")).read_text())
    assert spec["tasks"] == {"freshness": ["fresh", "rotten"], "fruit": ["apple", "banana", "orange"]}


def test_balance_weights_reach_each_tasks_loss():
    from fruitlab.training.fit import _class_weights

    train = SimpleNamespace(targets={"fruit": [0, 0, 0, 1], "freshness": [0, 1, 1, 1]})
    splits = SimpleNamespace(splits={"train": train}, tasks={"fruit": ["a", "b"], "freshness": ["x", "y"]})
    weights = _class_weights(splits)
    assert weights["fruit"] == pytest.approx([0.5, 1.5])  # 1/3 and 1/1, scaled to mean 1
    assert weights["freshness"] == pytest.approx([1.5, 0.5])
    logits, labels = _losses()
    weighted = TaskLoss(["fruit", "freshness"], class_weights={t: torch.tensor(w) for t, w in weights.items()})
    expected = torch.nn.functional.cross_entropy(logits["fruit"][:, :2], labels["fruit"] % 2, torch.tensor([0.5, 1.5]))
    got = weighted.per_task(
        {"fruit": logits["fruit"][:, :2], "freshness": logits["freshness"]},
        {"fruit": labels["fruit"] % 2, "freshness": labels["freshness"]},
    )
    assert got["fruit"] == pytest.approx(float(expected))
