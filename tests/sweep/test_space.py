"""The search space: keys checked against the schema, ranges against the validators, values applied like --set."""

from __future__ import annotations

import optuna
import pytest

from fruitlab.config import PACKAGED_EXPERIMENTS, list_experiments, load_experiment, validate_experiment
from fruitlab.errors import ConfigError, SweepError
from fruitlab.sweep.samplers import PerTrialSeed, build_sampler
from fruitlab.sweep.space import check_key, check_space, config_hash, suggest, trial_experiment
from fruitlab.sweep.storage import default_storage, open_storage, redact

SPACE = {
    "finetune.phases.0.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "finetune.phases.1.train.last_stages": {"type": "int", "low": 1, "high": 3},
    "data.batch_size": {"type": "categorical", "choices": [16, 32]},
    "model.head.hidden": {"type": "categorical", "choices": [[], [128]]},
}


def experiment(sweep: dict | None = None, **top) -> object:
    raw = {
        "finetune": {"phases": [{"epochs": 1}, {"epochs": 1, "train": {"last_stages": 2}}]},
        "sweep": {"metric": "val/class/acc", "params": SPACE, **(sweep or {})},
        **top,
    }
    return validate_experiment(raw, source="experiments/x.yaml", name="x")


def test_every_shipped_sweep_section_is_valid():
    checked = 0
    for name in list_experiments(PACKAGED_EXPERIMENTS):
        exp = load_experiment(name, directory=PACKAGED_EXPERIMENTS)
        if exp.sweep is not None:
            check_space(exp)
            checked += 1
    assert checked >= 1  # quickstart has one


def test_a_resolved_experiment_validates_to_itself():
    """Trials apply their values to the resolved dump, so dump -> validate must be lossless for every file."""
    for name in list_experiments(PACKAGED_EXPERIMENTS):
        exp = load_experiment(name, directory=PACKAGED_EXPERIMENTS)
        assert validate_experiment(exp.model_dump(mode="json")).model_dump() == exp.model_dump(), name


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("finetune.phases.0.optimizer.lrr", "did you mean 'lr'"),
        ("data.batchsize", "did you mean 'batch_size'"),
        ("data.batch_size.x", "data.batch_size is a value, not a section"),
        ("finetuning.phases.0.epochs", "did you mean 'finetune'"),
    ],
)
def test_unknown_keys_fail_with_did_you_mean(key, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_key(key, "experiments/x.yaml")


def test_keys_through_lists_unions_and_free_mappings():
    for key in (
        "finetune.phases.1.train.last_stages",  # Literal | TrainSpec
        "model.heads.fruit.dropout",  # dict[str, TaskHeadConfig] | None
        "model.kwargs.drop_rate",  # dict[str, Any]: timm's to judge
        "loss.weights.fruit",
        "data.augment.randaugment.magnitude",
    ):
        check_key(key)


def test_both_ends_of_every_range_are_validated_before_the_study():
    with pytest.raises(ConfigError, match=r"(?s)sweep.params.data.batch_size: 0 is not allowed.*greater than or equal"):
        check_space(experiment({"params": {"data.batch_size": {"type": "int", "low": 0, "high": 8}}}))
    with pytest.raises(ConfigError, match="index 2 is out of range"):
        check_space(experiment({"params": {"finetune.phases.2.epochs": {"type": "int", "low": 1, "high": 2}}}))
    with pytest.raises(ConfigError, match="'adamm'"):
        check_space(
            experiment(
                {"params": {"finetune.phases.0.optimizer.name": {"type": "categorical", "choices": ["sgd", "adamm"]}}}
            )
        )


def test_metric_and_direction_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'val/class/acc'"):
        check_space(experiment({"metric": "val/class/accuracy"}))
    with pytest.raises(ConfigError, match="a loss wants minimize"):
        check_space(experiment({"metric": "val/loss"}))
    multi = experiment(
        {"metric": "val/joint/acc"},
        model={"heads": {"fruit": {}, "freshness": {}}},
        data={"labels": {"source": "class_name", "pattern": "^(?P<freshness>fresh|rotten)(?P<fruit>.+)$"}},
    )
    check_space(multi)


def test_schema_rejects_malformed_params():
    for bad, fragment in (
        ({"type": "float", "low": 1.0}, "needs `low` and `high`"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log: true needs low > 0"),
        ({"type": "int", "low": 1.5, "high": 3}, "whole-number"),
        ({"type": "categorical"}, "non-empty list"),
        ({"type": "floatt", "low": 1, "high": 2}, "'float', 'int' or 'categorical'"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            experiment({"params": {"data.batch_size": bad}})


def test_enqueued_trials_name_params():
    check_space(experiment({"enqueue": [{"data.batch_size": 16}]}))
    with pytest.raises(ConfigError, match=r"did you mean 'data\.batch_size'"):
        check_space(experiment({"enqueue": [{"data.batchsize": 16}]}))


def test_suggested_values_apply_like_set():
    exp = experiment()
    values = suggest(
        optuna.trial.FixedTrial(
            {
                "finetune.phases.0.optimizer.lr": 1e-4,
                "finetune.phases.1.train.last_stages": 3,
                "data.batch_size": 32,
                "model.head.hidden": "[128]",  # lists are sampled as their YAML text
            }
        ),
        exp.sweep.params,
    )
    assert values["model.head.hidden"] == [128]
    trial = trial_experiment(exp, values)
    assert trial.finetune.phases[0].optimizer.lr == 1e-4  # stays a float through YAML (1e-04 is a string in YAML 1.1)
    assert trial.finetune.phases[1].train.last_stages == 3
    assert trial.data.batch_size == 32 and trial.model.head.hidden == [128]
    assert trial.name == "x" and trial.source == "experiments/x.yaml"


def test_config_hash_ignores_the_budget_only():
    base = config_hash(experiment())
    assert config_hash(experiment({"trials": 99, "timeout": 60})) == base
    assert config_hash(experiment({"seed": 1})) != base
    assert config_hash(experiment(seed=7)) != base


def test_trial_k_samples_with_seed_plus_k_so_workers_differ():
    def first_value(sampler, number_of_earlier_trials: int) -> float:
        study = optuna.create_study(sampler=sampler)
        for _ in range(number_of_earlier_trials):
            study.ask()  # trials other workers hold (running)
        return study.ask().suggest_float("x", 0, 1)

    exp = experiment()
    again = first_value(build_sampler(exp.sweep), 0)
    assert first_value(build_sampler(exp.sweep), 0) == again  # reproducible
    assert first_value(build_sampler(exp.sweep), 1) != again  # a second worker's first trial differs
    assert isinstance(build_sampler(exp.sweep), PerTrialSeed)


def test_storage_urls(tmp_path):
    assert default_storage(f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    for url, fragment in (
        ("postgres//oops", "is not a database URL"),
        ("mongodb://h/x", "unsupported database 'mongodb'"),
        (f"sqlite:///{tmp_path}/missing/optuna.db", "does not exist"),
    ):
        with pytest.raises(SweepError, match=fragment):
            open_storage(url, on_stale=lambda study, trial: None)


def test_pruners_by_name():
    from fruitlab.sweep.samplers import build_pruner

    kinds = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}
    for name, kind in {**kinds, "none": optuna.pruners.NopPruner}.items():
        assert isinstance(build_pruner(experiment({"pruner": name}).sweep), kind)
    assert experiment({"pruner": {"name": "median", "warmup_epochs": 3}}).sweep.pruner.warmup_epochs == 3
