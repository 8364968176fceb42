"""Sampler and pruner from the sweep section."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from fruitlab.config import SweepConfig


class PerTrialSeed(BaseSampler):
    """Trial k samples with `seed + k`, through a sampler made for it.

    One seed shared by several workers would make them draw the same values (each starts with the same random
    trials); seeding by trial number keeps a single worker reproducible and makes workers differ. TPE keeps no
    state between trials besides its random generator (it refits on the study's history every time), so a fresh
    sampler per trial loses nothing.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._current: tuple[int, BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._make(self._seed + trial.number))
        return self._current[1]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, distribution: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        pass  # the seed is a function of the trial number by design


def build_sampler(sweep: SweepConfig) -> BaseSampler:
    if sweep.sampler == "random":
        return PerTrialSeed(lambda seed: optuna.samplers.RandomSampler(seed=seed), sweep.seed)
    # Optuna's default of 10 random start-up trials is the whole budget of a small sweep: use a quarter of it.
    startup = max(2, min(10, sweep.trials // 4))
    return PerTrialSeed(lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup), sweep.seed)


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    p = sweep.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()
