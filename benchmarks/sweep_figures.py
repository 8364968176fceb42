"""Figures for benchmarks/sweep.md, read back from the studies (Optuna storage) and the runs (MLflow).

    python benchmarks/sweep_figures.py --storage sqlite:////tmp/accept/optuna.db \
        --tracking sqlite:////tmp/accept/mlflow.db --baseline RUN_ID qs-pruned qs-full

Per study: trial states, epochs trained against the epochs the same trials would have trained without pruning,
seconds of training (each trial's own wall time, summed), and the best value; per trial: its parameters' run,
state, epochs, seconds and value. The baseline is an ordinary `fruitlab fit` of the untuned experiment.
"""

from __future__ import annotations

import argparse

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fruitlab.tracking import metric_names
from fruitlab.tracking.registry import SINGLE_METRIC


def study_figures(storage: str, name: str) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    print(f"\n## study {name}")
    print("| trial | state | epochs | of | s | s/epoch | value |")
    print("|---|---|---|---|---|---|---|")
    run, planned, seconds = 0, 0, 0.0
    for t in study.trials:
        epochs = int(t.user_attrs.get("fruitlab.epochs", 0))
        full = int(t.user_attrs.get("fruitlab.max_epochs", 0))
        secs = float(t.user_attrs.get("fruitlab.seconds", 0.0))
        value = f"{t.value:.4f}" if t.value is not None else "-"
        rate = f"{secs / epochs:.0f}" if epochs else "-"
        print(f"| {t.number} | {t.state.name.lower()} | {epochs} | {full} | {secs:.0f} | {rate} | {value} |")
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            run, planned, seconds = run + epochs, planned + full, seconds + secs
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    # what the pruned trials would have cost to the end, at each one's own measured seconds per epoch
    extra = sum(
        (int(t.user_attrs["fruitlab.max_epochs"]) - int(t.user_attrs["fruitlab.epochs"]))
        * float(t.user_attrs["fruitlab.seconds"])
        / max(1, int(t.user_attrs["fruitlab.epochs"]))
        for t in pruned
    )
    best = study.best_trial
    print(
        f"\n{len(study.trials)} trials, {len(pruned)} pruned; epochs trained {run} of {planned} "
        f"({planned - run} saved, {(planned - run) / max(1, planned):.0%}); training {seconds:.0f} s, "
        f"the pruned trials to the end would have added about {extra:.0f} s ({extra / max(1.0, seconds):.0%}); "
        f"best trial {best.number}: {best.value:.4f}"
    )


def baseline_figures(tracking: str, run_id: str) -> None:
    client = MlflowClient(tracking)
    run = client.get_run(run_id)
    history = [m.value for m in client.get_metric_history(run_id, "val/class/acc")]
    acc = metric_names.metric(run, SINGLE_METRIC)  # also a baseline logged as best/val/class/acc
    print(
        f"\n## baseline run {run_id}: {SINGLE_METRIC} {acc:.4f} "
        f"(checkpoint on val/loss), best epoch of val/class/acc {max(history):.4f}, "
        f"{len(history)} epochs, fit {run.data.metrics.get('fit_seconds', 0):.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--tracking", required=True)
    parser.add_argument("--baseline")
    parser.add_argument("studies", nargs="+")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.baseline:
        baseline_figures(args.tracking, args.baseline)
    for name in args.studies:
        study_figures(args.storage, name)


if __name__ == "__main__":
    main()
