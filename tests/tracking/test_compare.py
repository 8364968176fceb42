"""compare: the table and the curves hold what MLflow holds; named runs, models and the top K of an experiment."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from fruitlab.errors import TrackingError
from fruitlab.tracking import runs
from fruitlab.tracking.compare import compare_runs
from fruitlab.tracking.compare_report import write_report
from tests.test_cli import assert_clean_error, run

pytestmark = pytest.mark.smoke

ACC, F1 = "val_best/class/acc", "val_best/class/f1_macro"
STEPS_PER_EPOCH = 84  # like the fruit runs: Lightning logs epoch metrics at the global step


def log_history(client: MlflowClient, run_id: str, curves: dict[str, list[float]], phases: list[int]) -> None:
    """Per-epoch metrics as Lightning's MLflow logger leaves them: `epoch` and `phase` at the same global step."""
    now = int(time.time() * 1000)
    batch = []
    for epoch, phase in enumerate(phases):
        step = (epoch + 1) * STEPS_PER_EPOCH - 1
        batch += [Metric("epoch", epoch, now, step), Metric("phase", phase, now, step)]
        batch += [Metric(key, values[epoch], now, step) for key, values in curves.items()]
    client.log_batch(run_id, metrics=batch)


def finished_run(client: MlflowClient, uri: str, experiment: str, metrics: dict[str, float], **tags: str) -> str:
    """A FINISHED run with summary metrics (no model: compare reads params, metrics and histories only)."""
    run_id = client.create_run(runs.ensure_experiment(client, experiment, uri), tags=tags).info.run_id
    runs.log_metrics(client, run_id, metrics)
    runs.finish_run(client, run_id)
    return run_id


def add_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


COMMON = {
    "model.backbone": "test_efficientnet",
    "data.dataset": "fruits_fresh_rotten",
    "trainer.precision": "32-true",  # same everywhere and not a key param: not shown
    "description": "long text, never shown",
    "finetune.phases.0.epochs": 2,
    "finetune.phases.1.epochs": 1,
    "finetune.phases.1.optimizer.backbone_lr": "None",  # None everywhere: not shown
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SimpleNamespace:
    """Three finished runs of `cmp` with params and 3-epoch histories (the middle one promoted), a multi-task run,
    and a sweep parent (never ranked)."""
    work = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        client = runs.client_for(uri)
        ids = {}
        for name, acc, lr, hflip in (("low", 0.70, 1e-3, 0.5), ("high", 0.90, 3e-3, 0.5), ("mid", 0.80, 1e-3, 0.0)):
            ids[name] = finished_run(client, uri, "cmp", {ACC: acc, F1: acc - 0.05, "test/class/acc": acc - 0.1})
            add_params(client, ids[name], COMMON | {"finetune.phases.0.optimizer.lr": lr, "data.augment.hflip": hflip})
            curves = {
                "train/loss": [1.2, 0.8, 0.6],
                "val/loss": [1.0, 0.9 - acc / 10, 0.5],
                "val/class/acc": [0.5, 0.6, acc],
            }
            log_history(client, ids[name], curves, phases=[0, 0, 1])
        client.create_registered_model("cmp")
        version = client.create_model_version("cmp", f"runs:/{ids['mid']}/model", run_id=ids["mid"])
        client.set_registered_model_alias("cmp", "champion", version.version)
        finished_run(client, uri, "cmp", {ACC: 0.99}, **{"fruitlab.role": "sweep"})
        ids["multi"] = finished_run(client, uri, "multi", {"val_best/joint/acc": 0.6})
        curves = {"val/loss": [2.0, 1.5], "val/fruit/acc": [0.4, 0.7], "val/freshness/acc": [0.6, 0.8]}
        log_history(client, ids["multi"], curves | {"val/joint/acc": [0.3, 0.55]}, phases=[0, 1])
    return SimpleNamespace(work=work, uri=uri, ids=ids, client=MlflowClient(uri))


def test_top_k_of_an_experiment_table_values_come_from_mlflow(store, tmp_path):
    comparison = compare_runs(store.uri, experiment="cmp", top=2)
    assert [r.run_id for r in comparison.runs] == [store.ids["high"], store.ids["mid"]]  # the sweep parent is not
    assert comparison.title == f"top 2 of cmp by {ACC}"
    rows = {row.name: row for row in comparison.rows()}
    for key in (ACC, F1, "test/class/acc"):
        expected = [f"{store.client.get_run(r.run_id).data.metrics[key]:.4f}" for r in comparison.runs]
        assert rows[key].cells == expected and rows[key].best == 0
    assert rows[ACC].cells == ["0.9000", "0.8000"]
    assert rows["p0.lr"].cells == ["0.003", "0.001"] and rows["aug.hflip"].cells == ["0.5", "0.0"]  # they differ
    assert rows["model.backbone"].cells == ["test_efficientnet"] * 2  # a key param, shown though equal
    assert {"trainer.precision", "description", "p1.backbone_lr"}.isdisjoint(rows)
    assert rows["status"].cells == ["finished"] * 2 and rows["epochs"].cells == ["3", "3"]
    for r in comparison.runs:
        got = store.client.get_run(r.run_id).info
        assert r.seconds == pytest.approx((got.end_time - got.start_time) / 1000)
    for r in comparison.runs:  # curves: the logged history, by epoch (1-based), and where phase 2 begins
        for key in ("train/loss", "val/loss", "val/class/acc"):
            history = [m.value for m in store.client.get_metric_history(r.run_id, key)]
            assert r.curves[key] == list(enumerate(history, 1))
        assert r.phase_starts == [3]
    assert comparison.curve_keys() == ["train/loss", "val/loss", "val/class/acc"]

    png, page = write_report(comparison, tmp_path)
    assert png == tmp_path / "compare-cmp-top2.png" and page == tmp_path / "compare-cmp-top2.html"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300
    text = page.read_text()
    assert text.count("<svg") == 1 and "<script" not in text and "src=" not in text and "<link" not in text
    assert '<td class="best">0.9000</td><td>0.8000</td>' in text and store.ids["high"][:8] in text


def test_runs_by_id_prefix_and_by_registered_model(store):
    refs = [store.ids["low"][:10], "models:/cmp@champion", f"runs:/{store.ids['high']}/model", "models:/cmp/1"]
    comparison = compare_runs(store.uri, run_refs=refs)
    assert [r.run_id for r in comparison.runs] == [store.ids[k] for k in ("low", "mid", "high", "mid")]
    assert {row.name: row.best for row in comparison.rows()}[ACC] == 2


def test_a_multi_task_run_has_curves_per_task(store, tmp_path):
    comparison = compare_runs(store.uri, run_refs=[store.ids["multi"], store.ids["high"]])
    keys = comparison.curve_keys()
    assert keys == ["train/loss", "val/loss", "val/class/acc", "val/freshness/acc", "val/fruit/acc", "val/joint/acc"]
    multi = comparison.runs[0]
    assert multi.curves["val/fruit/acc"] == [(1, pytest.approx(0.4)), (2, pytest.approx(0.7))]
    assert multi.phase_starts == [2]
    png, _ = write_report(comparison, tmp_path)
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"experiment": "cmpp"}, "no MLflow experiment 'cmpp' in sqlite:"),
        ({"experiment": "cmpp"}, "did you mean 'cmp'?"),
        ({"experiment": "cmp", "metric": "val_best/class/ac"}, "did you mean 'val_best/class/acc'"),
        ({"run_refs": ["0" * 32]}, "it has 5 runs in experiments cmp, multi"),
        ({"run_refs": ["champion"]}, "unknown model 'champion': expected models:/NAME@ALIAS"),
        ({"run_refs": ["models:/cmp@champ"]}, "did you mean 'champion'"),
        ({"run_refs": ["models:/cmp/9"]}, "has no version '9' (versions: 1)"),
        ({}, "not both or neither"),
    ],
)
def test_unknown_names_say_what_exists(store, kwargs, fragment):
    with pytest.raises(TrackingError) as error:
        compare_runs(store.uri, **kwargs)
    assert fragment in str(error.value)


def test_cli_prints_the_table_and_writes_the_files(store, tmp_path):
    env = {"MLFLOW_TRACKING_URI": store.uri}
    result = run("compare", "--experiment", "cmp", "--top", "2", "--out", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert "0.9000" in result.stdout and "0.8000" in result.stdout and store.ids["low"][:8] not in result.stdout
    last = result.stdout.strip().splitlines()[-1].split()
    assert Path(last[2]) == tmp_path / "compare-cmp-top2.png" and Path(last[2]).is_file()
    assert Path(last[4]) == tmp_path / "compare-cmp-top2.html" and Path(last[4]).is_file()
    unknown = run("compare", "--experiment", "cmpp", env=env)
    assert_clean_error(unknown, "did you mean 'cmp'?")
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_runs_logged_with_the_old_names_rank_and_show_beside_new_ones(mlflow_uri):
    """Runs from before val_best/... carry best/val/...: ranked and shown under today's names, one row per metric."""
    client = runs.client_for(mlflow_uri)
    old = {"best/val/class/acc": 0.85, "best/val/class/f1_macro": 0.80, "test/class/acc": 0.70}
    ids = {
        "old": finished_run(client, mlflow_uri, "mixed", old),
        "new": finished_run(client, mlflow_uri, "mixed", {ACC: 0.90, F1: 0.88}),
        "low": finished_run(client, mlflow_uri, "mixed", {ACC: 0.60}),
    }
    comparison = compare_runs(mlflow_uri, experiment="mixed", top=3)
    assert [r.run_id for r in comparison.runs] == [ids["new"], ids["old"], ids["low"]]
    assert comparison.title == f"top 3 of mixed by {ACC}"
    rows = {row.name: row for row in comparison.rows() if row.section == "metrics"}
    assert list(rows) == ["test/class/acc", ACC, F1]  # no best/val/... row beside the new one
    assert rows[ACC].cells == ["0.9000", "0.8500", "0.6000"] and rows[F1].cells == ["0.8800", "0.8000", "-"]

    by_old_name = compare_runs(mlflow_uri, experiment="mixed", top=1, metric="best/val/class/f1_macro")
    assert [r.run_id for r in by_old_name.runs] == [ids["new"]] and by_old_name.title.endswith(f"by {F1}")
    only_old = finished_run(client, mlflow_uri, "old-only", old)  # the default metric, under its old name
    assert [r.run_id for r in compare_runs(mlflow_uri, experiment="old-only").runs] == [only_old]


def test_a_missing_store_is_not_created(tmp_path):
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    with pytest.raises(TrackingError, match="no MLflow store at"):
        compare_runs(missing, run_refs=["0" * 32])
    assert not (tmp_path / "nope.db").exists()


def test_numbers_are_rounded_to_four_significant_digits():
    from fruitlab.tracking.compare import _number, param_text

    assert [_number(v) for v in (0.9, 0.229166671633, 12.3456, None)] == ["0.9000", "0.2292", "12.35", "-"]
    assert param_text("0.0003162277660168379") == "0.0003162" and param_text("0.0") == "0.0"
    assert param_text("32") == "32" and param_text("adamw") == "adamw" and param_text("1e-05") == "1e-05"
