"""Runs and experiments as fruitlab creates them: names, the experiment kind MLflow's UI reads, the UI's URL."""

from __future__ import annotations

import random

from mlflow.tracking import MlflowClient

from fruitlab.config import load_experiment
from fruitlab.tracking import runs
from tests.conftest import SMOKE_EXPERIMENT, write_experiment


def test_run_names_differ_whatever_the_seed(mlflow_uri, tmp_path):
    exp = load_experiment(str(write_experiment(tmp_path / "same.yaml", SMOKE_EXPERIMENT)))
    client = MlflowClient(mlflow_uri)
    names = set()
    for _ in range(2):
        random.seed(exp.seed)  # what fit's seed_everything does before the run is created
        names.add(client.get_run(runs.start_run(exp, mlflow_uri, {})).info.run_name)
    assert len(names) == 2 and all(n.startswith("same-") for n in names)


def test_experiments_are_marked_as_model_training_unless_a_user_chose(mlflow_uri):
    client = runs.client_for(mlflow_uri)
    new = runs.ensure_experiment(client, "new", mlflow_uri)
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("old")  # made before fruitlab set the tag
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert runs.ensure_experiment(client, "old", mlflow_uri) == old
    runs.ensure_experiment(client, "chosen", mlflow_uri)
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_ui_url_is_the_page_of_fruitlabs_server_that_opens_the_model_training_mode():
    assert runs.ui_url("http://127.0.0.1:5000/") == "http://127.0.0.1:5000/fruitlab"
