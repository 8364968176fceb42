"""The search space of `sweep.params`: checked against the experiment schema, sampled per trial, applied as overrides.

Every dotted key must name a setting of the experiment schema (a typo fails before the study starts, with "did you
mean"), and both ends of every range (every choice of a categorical) must give a valid experiment, so a trial never
fails on a value the schema would have refused. Trial values are applied to the resolved experiment with the same
`apply_override` + validation as `--set`. Nothing here imports Optuna: `suggest` takes the trial it is given.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from fruitlab.config import Experiment, SweepConfig, SweepParam, apply_override, validate_experiment
from fruitlab.errors import ConfigError, did_you_mean
from fruitlab.names import JOINT, PER_EPOCH, SINGLE_TASK, metric_key


def sweep_of(exp: Experiment) -> SweepConfig:
    if exp.sweep is None:
        raise ConfigError(
            f"{exp.source}: no `sweep:` section, so there is nothing to search; add one, e.g.\n"
            "sweep:\n  metric: val/class/acc\n  trials: 8\n  params:\n"
            "    finetune.phases.0.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
        )
    return exp.sweep


def check_space(exp: Experiment) -> SweepConfig:
    """The experiment's sweep section, after checking its metric, every key and both ends of every range."""
    sweep = sweep_of(exp)
    check_metric(exp, sweep)
    for key, param in sweep.params.items():
        check_key(key, exp.source)
        for value in _extremes(param):
            try:
                trial_experiment(exp, {key: value})
            except ConfigError as exc:
                reason = str(exc).removeprefix("--set ").removeprefix(f"{exp.source}: ")
                raise ConfigError(f"{exp.source}: sweep.params.{key}: {value!r} is not allowed: {reason}") from None
    for i, values in enumerate(sweep.enqueue):
        for key in values:
            if key not in sweep.params:
                raise ConfigError(
                    f"{exp.source}: sweep.enqueue.{i}: {key!r} is not in sweep.params"
                    f"{did_you_mean(key, sweep.params)} (params: {', '.join(sweep.params)})"
                )
        try:
            trial_experiment(exp, values)
        except ConfigError as exc:
            reason = str(exc).removeprefix("--set ").removeprefix(f"{exp.source}: ")
            raise ConfigError(f"{exp.source}: sweep.enqueue.{i}: {values} is not allowed: {reason}") from None
    return sweep


def epoch_metrics(exp: Experiment) -> list[str]:
    """What fit logs per validation epoch, for this experiment's tasks."""
    tasks = list(exp.model.heads) if exp.model.heads else [SINGLE_TASK]
    names = ["val/loss", *(metric_key("val", task, name) for task in tasks for name in PER_EPOCH)]
    if exp.model.heads:
        names += [metric_key("val", JOINT, "acc"), *(metric_key("val", task, "loss") for task in tasks)]
    return names


def check_metric(exp: Experiment, sweep: SweepConfig) -> None:
    allowed = epoch_metrics(exp)
    if sweep.metric not in allowed:
        raise ConfigError(
            f"{exp.source}: sweep.metric: {sweep.metric!r} is not a per-epoch metric of this experiment"
            f"{did_you_mean(sweep.metric, allowed)} (allowed: {', '.join(allowed)})"
        )
    if sweep.metric.endswith("loss") and sweep.direction == "maximize":
        raise ConfigError(f"{exp.source}: sweep.direction: maximize on {sweep.metric!r}; a loss wants minimize")


def check_key(key: str, source: str = "<memory>") -> None:
    """Walk a dotted key through the schema: `finetune.phases.0.optimizer.lr` is a key, `...optimizer.lrr` is not."""
    node: Any = Experiment
    parts = key.split(".")
    for i, part in enumerate(parts):
        nxt = _child(node, part)
        if nxt is not _MISSING:
            node = nxt
            continue
        at = ".".join(parts[:i]) or "the top level"
        fields = _fields(node)
        if fields:
            raise ConfigError(
                f"{source}: sweep.params: {key!r} is not a setting: {at} has no key {part!r}"
                f"{did_you_mean(part, fields)} (allowed there: {', '.join(fields)})"
            )
        raise ConfigError(f"{source}: sweep.params: {key!r} is not a setting: {at} is a value, not a section")


def suggest(trial: Any, params: dict[str, SweepParam]) -> dict[str, Any]:
    """Sample every parameter of the space on an Optuna trial; returns {dotted key: value}."""
    values: dict[str, Any] = {}
    for key, p in params.items():
        if p.type == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            choices = p.choices or []
            if all(_scalar(c) for c in choices):
                values[key] = trial.suggest_categorical(key, choices)
            else:  # Optuna stores scalars only: lists and mappings are sampled as their YAML text
                text = trial.suggest_categorical(key, [_yaml(c) for c in choices])
                values[key] = yaml.safe_load(text)
    return values


def trial_experiment(exp: Experiment, values: dict[str, Any]) -> Experiment:
    """The experiment with a trial's values ({dotted key: value}) applied, validated like `--set`."""
    raw = exp.model_dump(mode="json")
    for key, value in values.items():
        apply_override(raw, f"{key}={_yaml(value)}")
    return validate_experiment(raw, source=exp.source, name=exp.name)


def config_hash(exp: Experiment) -> str:
    """Identifies the experiment a study searches: settings and search space, not the trial budget."""
    data = exp.model_dump(mode="json", exclude={"sweep": {"trials", "timeout"}, "tracking": {"uri"}})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ internals
_MISSING = object()


def _extremes(param: SweepParam) -> list[Any]:
    if param.type == "categorical":
        return list(param.choices or [])
    if param.type == "int":
        return [int(param.low or 0), int(param.high or 0)]
    return [param.low, param.high]


def _members(annotation: Any) -> list[Any]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _child(node: Any, part: str) -> Any:
    for member in _members(node):
        if member is Any:
            return Any  # free-form mapping (model.kwargs): any key below is the library's to judge
        if isinstance(member, type) and issubclass(member, BaseModel) and part in member.model_fields:
            return member.model_fields[part].annotation
        origin, args = typing.get_origin(member), typing.get_args(member)
        if origin is list and part.isdigit():
            return args[0] if args else Any
        if origin is dict:
            return args[1] if len(args) == 2 else Any
    return _MISSING


def _fields(node: Any) -> list[str]:
    for member in _members(node):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return list(member.model_fields)
    return []


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _yaml(value: Any) -> str:
    """One-line YAML that reads back as the same value (1e-05 stays a float, [16, 32] a list)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()
