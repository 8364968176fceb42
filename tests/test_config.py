"""The schema: defaults, every experiment file, overrides, and errors that name file, key, value and choices."""

import pytest

from fruitlab.config import (
    PACKAGED_EXPERIMENTS,
    Experiment,
    apply_override,
    describe_experiment,
    find_experiments,
    list_experiments,
    load_experiment,
    validate_experiment,
)
from fruitlab.errors import ConfigError

EXPERIMENTS = PACKAGED_EXPERIMENTS


@pytest.mark.parametrize("name", sorted(list_experiments(EXPERIMENTS)))
def test_every_experiment_file_validates_and_has_a_description(name):
    exp = load_experiment(name, directory=EXPERIMENTS)
    assert exp.name == name
    assert exp.total_epochs >= 1
    assert describe_experiment(EXPERIMENTS / f"{name}.yaml")


def test_the_shipped_experiments_exist():
    assert {"quickstart", "finetune_vgg16", "cifar10_resnet18"} <= set(list_experiments(EXPERIMENTS))


def test_defaults_live_in_the_schema():
    exp = Experiment()
    assert exp.data.dataset == "fruits_fresh_rotten"
    assert exp.finetune.phases[0].train == "none"
    assert exp.early_stopping.enabled and exp.checkpoint.save_last


def test_unknown_key_names_file_key_and_suggests(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  batchsize: 8\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(str(path))
    msg = str(err.value)
    assert str(path) in msg and "data.batchsize" in msg and "did you mean 'batch_size'" in msg


def test_bad_value_names_key_value_and_constraint():
    with pytest.raises(ConfigError) as err:
        validate_experiment({"data": {"batch_size": 0}}, source="e.yaml")
    msg = str(err.value)
    assert "e.yaml" in msg and "data.batch_size" in msg and "got 0" in msg and "greater than or equal to 1" in msg


def test_bad_literal_lists_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        validate_experiment({"finetune": {"phases": [{"epochs": 1, "optimizer": {"name": "adamm"}}]}})
    msg = str(err.value)
    assert "finetune.phases.0.optimizer.name" in msg and "'adam'" in msg and "'sgd'" in msg


def test_train_spec_needs_exactly_one_choice():
    with pytest.raises(ConfigError, match="exactly one of last_stages, last_blocks, modules"):
        validate_experiment({"finetune": {"phases": [{"epochs": 1, "train": {"last_stages": 1, "last_blocks": 2}}]}})


def test_unknown_experiment_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        load_experiment("quikstart", directory=EXPERIMENTS)


def test_experiments_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    """Packaged experiments from an empty folder; ./experiments adds files and a local file wins over a packaged one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRUITLAB_EXPERIMENTS", raising=False)
    found = find_experiments()
    assert found["quickstart"].origin == "packaged" and found["quickstart"].path == EXPERIMENTS / "quickstart.yaml"
    assert load_experiment("quickstart").source == str(EXPERIMENTS / "quickstart.yaml")

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text("description: my own\nseed: 7\n")
    (tmp_path / "experiments" / "mine.yaml").write_text("description: mine\n")
    found = find_experiments()
    assert found["quickstart"].origin == "./experiments"
    assert found["quickstart"].shadows == EXPERIMENTS / "quickstart.yaml"
    assert found["quickstart"].shown_origin() == "./experiments (overrides packaged)"
    assert found["mine"].origin == "./experiments" and found["mine"].shadows is None
    assert found["finetune_vgg16"].origin == "packaged"
    assert load_experiment("quickstart").seed == 7  # the local file wins


def test_a_local_file_that_overrides_a_packaged_one_is_said(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text("seed: 7\n")
    with caplog.at_level("INFO", logger="fruitlab.config"):
        load_experiment("quickstart")
    assert "overrides the packaged one" in caplog.text and str(EXPERIMENTS / "quickstart.yaml") in caplog.text


def test_an_unknown_name_lists_the_known_ones_and_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRUITLAB_EXPERIMENTS", raising=False)
    with pytest.raises(ConfigError) as err:
        load_experiment("quikstart")
    msg = str(err.value)
    assert "did you mean 'quickstart'" in msg and "finetune_vgg16, multitask_lite0" in msg
    assert str(tmp_path / "experiments") in msg and str(EXPERIMENTS) in msg and "fruitlab init" in msg
    with pytest.raises(
        ConfigError, match=r"experiment file experiments/quickstart.yaml does not exist .*-e quickstart"
    ):
        load_experiment("experiments/quickstart.yaml")


def test_other_data_than_the_files_gets_its_own_mlflow_experiment(tmp_path):
    """A user's folder given with --set never lands in the file's MLflow experiment (the fruit demo's 'quickstart')."""
    folder = ["data.dataset=image_folder", f"data.root={tmp_path / 'my_photos'}"]
    assert load_experiment("quickstart", directory=EXPERIMENTS).tracking.experiment is None  # the file's name
    assert load_experiment("quickstart", folder, directory=EXPERIMENTS).tracking.experiment == "quickstart-my_photos"
    cifar = load_experiment("quickstart", ["data.dataset=cifar10"], directory=EXPERIMENTS)
    assert cifar.tracking.experiment == "quickstart-cifar10"
    copy = load_experiment("quickstart", [f"data.root={tmp_path}"], directory=EXPERIMENTS)  # the same dataset
    assert copy.tracking.experiment is None
    chosen = load_experiment("quickstart", [*folder, "tracking.experiment=mine"], directory=EXPERIMENTS)
    assert chosen.tracking.experiment == "mine"
    folder_file = tmp_path / "folder.yaml"
    folder_file.write_text(f"data: {{dataset: image_folder, root: {tmp_path / 'a'}}}\n")
    assert load_experiment(str(folder_file)).tracking.experiment is None
    assert load_experiment(str(folder_file), [f"data.root={tmp_path / 'b'}"]).tracking.experiment == "folder-b"


def test_overrides_parse_yaml_values_and_reach_list_items():
    exp = load_experiment(
        "quickstart",
        ["data.batch_size=8", "finetune.phases.1.epochs=5", "data.augment.scale=[0.8, 1.2]", "model.pretrained=false"],
        directory=EXPERIMENTS,
    )
    assert exp.data.batch_size == 8
    assert exp.finetune.phases[1].epochs == 5
    assert exp.data.augment.scale == (0.8, 1.2)
    assert exp.model.pretrained is False


def test_override_of_a_key_the_file_does_not_set_uses_schema_defaults():
    raw: dict = {}
    apply_override(raw, "finetune.phases.0.epochs=7")
    exp = validate_experiment(raw)
    assert exp.finetune.phases[0].epochs == 7 and len(exp.finetune.phases) == 2


def test_override_errors_are_config_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "data.batch_size")
    with pytest.raises(ConfigError, match="unknown key"):
        load_experiment("quickstart", ["data.bach_size=3"], directory=EXPERIMENTS)
    with pytest.raises(ConfigError, match=r"--set '=5': the key before '=' is empty; expected a dotted key"):
        apply_override({}, "=5")
    with pytest.raises(ConfigError, match=r"--set 'data..batch_size=5': the key before '=' is missing a part"):
        apply_override({}, "data..batch_size=5")


def test_flat_params_cover_every_value():
    flat = Experiment().flat()
    assert flat["data.batch_size"] == 32
    assert flat["finetune.phases.1.optimizer.lr"] == 1e-4
    assert "model.head.pool" in flat


def test_unquoted_off_and_on_in_set_mean_the_cache_modes() -> None:
    """YAML reads `--set performance.feature_cache=off` as False; it means off, not a type error."""
    from fruitlab.config import PerformanceConfig

    assert PerformanceConfig(feature_cache=False, image_cache=False).model_dump()["feature_cache"] == "off"
    assert PerformanceConfig(image_cache=False).image_cache == "off"
    assert PerformanceConfig(image_cache=True).image_cache == "on"
    assert PerformanceConfig(feature_cache=True).feature_cache == "auto"


@pytest.mark.parametrize("value", [0, 1.5])
def test_layer_decay_must_be_in_zero_one(value):
    with pytest.raises(ConfigError) as err:
        validate_experiment({"finetune": {"phases": [{"epochs": 1, "optimizer": {"layer_decay": value}}]}})
    msg = str(err.value)
    assert "finetune.phases.0.optimizer.layer_decay" in msg and f"got {value}" in msg


def test_ema_decay_must_be_below_one():
    with pytest.raises(ConfigError) as err:
        validate_experiment({"finetune": {"ema": {"decay": 1.0}}})
    assert "finetune.ema.decay" in str(err.value) and "less than 1" in str(err.value)
    assert validate_experiment({"finetune": {"ema": {"decay": 0.995}}}).finetune.ema.decay == 0.995
