"""The experiment schema: the single source of every default.

An experiment file (`<name>.yaml`: shipped in fruitlab/experiments/, in ./experiments/, or at any path) holds only
what differs from these defaults. Unknown keys are errors, and every error names the file, the dotted key, the value
received and what is allowed. This module imports neither torch nor any ML library, so listing and checking
experiments answers in well under a second.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fruitlab.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------- data
class RandAugmentConfig(Strict):
    """RandAugment (Cubuk et al. 2020) as torchvision defines it: `num_ops` of 14 operations, each at `magnitude`."""

    num_ops: int = Field(2, ge=1, le=14, description="operations per image, drawn uniformly with replacement")
    magnitude: int = Field(9, ge=0, le=30, description="strength, bin of torchvision's 31 (0 = none, 30 = most)")


class AugmentConfig(Strict):
    """Library-neutral augmentation spec; probabilities in [0, 1], angles in degrees, shift as a fraction of size.

    Per image (train split only): every key down to `randaugment`. Per batch, in the training step (data/mixing.py):
    `mixup`, `cutmix`, `mix_prob`.
    """

    hflip: float = Field(0.0, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    rotate: float = Field(0.0, ge=0, le=180, description="max rotation, degrees")
    scale: tuple[float, float] | None = Field(None, description="zoom range, e.g. [0.8, 1.2]")
    shear: float = Field(0.0, ge=0, le=45, description="max horizontal shear, degrees")
    shift: float = Field(0.0, ge=0, le=0.5, description="max translation per axis, fraction of image size")
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation strength")
    hue: float = Field(0.0, ge=0, le=0.5, description="max hue shift, fraction of the colour circle")
    blur: float = Field(0.0, ge=0, le=1, description="probability of a Gaussian blur (5x5, sigma 0.1-2 px)")
    sharpness: float = Field(0.0, ge=0, le=1, description="probability of sharpening (torchvision's factor 2)")
    random_resized_crop: tuple[float, float] | None = Field(None, description="area range, e.g. [0.6, 1.0]")
    randaugment: RandAugmentConfig | None = Field(None, description="e.g. {num_ops: 2, magnitude: 9}; None = off")
    mixup: float = Field(0.0, ge=0, description="batch mixup, Beta(alpha, alpha) alpha, e.g. 0.2; 0 = off")
    cutmix: float = Field(0.0, ge=0, description="batch cutmix, Beta(alpha, alpha) alpha, e.g. 1.0; 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability that a batch is mixed; both on: 50/50 which")

    @field_validator("scale", "random_resized_crop")
    @classmethod
    def _range(cls, value: tuple[float, float] | None, info: ValidationInfo) -> tuple[float, float] | None:
        top = 1 if info.field_name == "random_resized_crop" else float("inf")
        if value is not None and not 0 < value[0] <= value[1] <= top:
            raise ValueError(f"expected [low, high] with 0 < low <= high{' <= 1' if top == 1 else ''}")
        return value

    @property
    def enabled(self) -> bool:
        """Any per-image augmentation (mixup and cutmix act on batches, not here)."""
        batch = {"mixup", "cutmix", "mix_prob"}
        return self.model_dump(exclude=batch) != AugmentConfig().model_dump(exclude=batch)

    @property
    def mixing(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0


class LabelsConfig(Strict):
    """Where the labels of each task come from (multi-task models; one task, `class`, by default).

    `class`: the class folder is the label. `class_name`: a regular expression with one named group per task
    parsed from the class folder name, e.g. `^(?P<freshness>fresh|rotten)(?P<fruit>.+)$`. `nested`: class folders
    nested one level per task, `train/<fruit>/<freshness>/...` with `tasks: [fruit, freshness]`. `csv`: a CSV
    with a `path` column (relative to the dataset root) and one column per task.
    """

    source: Literal["class", "class_name", "nested", "csv"] = "class"
    pattern: str | None = Field(None, description="class_name: regex with one named group per task")
    tasks: list[str] | None = Field(None, description="nested: one task name per folder level; csv: the columns")
    csv: str | None = Field(None, description="csv: the file (relative paths are relative to the dataset root)")
    rename: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per task, raw value -> label, e.g. {fruit: {apples: apple}}"
    )

    @model_validator(mode="after")
    def _needs(self) -> LabelsConfig:
        if self.source == "class_name" and not self.pattern:
            raise ValueError("source: class_name needs `pattern`, a regex with one named group per task")
        if self.source == "nested" and not self.tasks:
            raise ValueError("source: nested needs `tasks`, one task name per folder level, e.g. [fruit, freshness]")
        if self.source == "csv" and not self.csv:
            raise ValueError("source: csv needs `csv`, the path of a CSV with a `path` column and one per task")
        return self


class DataConfig(Strict):
    dataset: str = Field("fruits_fresh_rotten", description="a registered dataset (fruitlab data list)")
    root: str | None = Field(None, description="image_folder: the folder; other datasets: an extracted copy")
    split: str | None = Field(
        None,
        description="dataset-specific split scheme (fruitlab data list); None = the dataset's default; 'grouped' "
        "(any dataset): re-split so that no copies of one photo (near-duplicates) are in two splits",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held-out fraction when the data has no val split")
    max_per_class: int | None = Field(None, ge=1, description="cap images per class and split (CPU-sized runs)")
    balance: Literal["none", "weights", "sampler"] = Field(
        "none",
        description="class imbalance: none; weights = inverse-frequency class weights in the loss; sampler = the "
        "train loader draws every class equally often (seeded WeightedRandomSampler, with replacement)",
    )
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="default: 2 x batch_size")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers; auto = cores - 1 (at least 1, at most 8): decoding runs beside compute"
    )
    labels: LabelsConfig = LabelsConfig()
    augment: AugmentConfig = AugmentConfig()
    augment_backend: Literal["albumentations", "torchvision"] = Field(
        "albumentations",
        description="same transforms either way; albumentations measured 1.5-2.7x torchvision's training "
        "images/s per core at 32 and 224 px, e.g. 2,767 vs 1,018 and 492 vs 212 (benchmarks/augment_backends.md)",
    )


class PreprocessConfig(Strict):
    """Overrides of the backbone's own timm data config; None = take it from the backbone."""

    input_size: int | None = Field(None, ge=8, description="square side, pixels")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: float | None = Field(None, gt=0, le=1, description="eval: resize to size/crop_pct, centre crop")


# -------------------------------------------------------------------------------------------------- model
class MlpConfig(Strict):
    """Hidden layers (linear -> activation -> dropout each) before a classifier, or shared by several."""

    hidden: list[int] = Field(default_factory=list, description="widths of the hidden layers")
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Literal["relu", "gelu", "silu"] = "relu"


class HeadConfig(MlpConfig):
    pool: Literal["model", "avg", "max", "avgmax"] = Field(
        "model", description="'model' uses the backbone's own pooling; the others pool its feature map"
    )


class SharedConfig(MlpConfig):
    """Multi-task models: layers shared by every task's head, after pooling (e.g. a 512-d MLP)."""


class TaskHeadConfig(MlpConfig):
    """One task's head over the shared layers (hidden layers, then its classifier)."""


class ModelConfig(Strict):
    backbone: str = Field("efficientnet_lite0", description="any timm model name (timm.list_models)")
    pretrained: bool | str = Field(
        True, description="true: offline package weights if known, else timm's hub; false; or a weights file"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for timm.create_model, e.g. {drop_path_rate: 0.1}"
    )
    head: HeadConfig = HeadConfig()
    shared: SharedConfig = SharedConfig()
    heads: dict[str, TaskHeadConfig] | None = Field(
        None, description="multi-task: task name -> head over the shared representation; names = data label tasks"
    )


class LossConfig(Strict):
    """How per-task losses combine (cross-entropy per task)."""

    combine: Literal["sum", "weights", "uncertainty"] = Field(
        "sum", description="sum; weights (fixed, below); uncertainty (learned log-variances, Kendall et al. 2018)"
    )
    weights: dict[str, float] = Field(default_factory=dict, description="combine: weights - task -> weight")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


# ----------------------------------------------------------------------------------------------- finetune
class TrainSpec(Strict):
    """Which part of the backbone trains; give exactly one."""

    last_stages: int | None = Field(None, ge=1, description="the last N coarse groups (stages) of timm's matcher")
    last_blocks: int | None = Field(None, ge=1, description="the last N fine groups (blocks) of timm's matcher")
    modules: list[str] | None = Field(None, description="module names (prefixes) inside the backbone")

    @model_validator(mode="after")
    def _exactly_one(self) -> TrainSpec:
        given = [k for k in ("last_stages", "last_blocks", "modules") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of last_stages, last_blocks, modules (got {given or 'none'})")
        return self


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0, description="learning rate of the head")
    backbone_lr: float | None = Field(None, gt=0, description="learning rate of trainable backbone parts; None = lr")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop only")
    nesterov: bool = False
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise lr decay (timm's param_groups_layer_decay, as BEiT/ViT fine-tuning): the backbone's "
        "top layer trains at backbone_lr (or lr), each layer below at layer_decay x the one above; None = one rate",
    )


class ScheduleConfig(Strict):
    name: Literal["constant", "cosine", "step", "exponential", "plateau"] = "constant"
    step_size: int = Field(1, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step/exponential/plateau: decay factor")
    patience: int = Field(2, ge=0, description="plateau: epochs without improvement")
    min_lr: float = Field(0.0, ge=0)


class PhaseConfig(Strict):
    name: str | None = None
    epochs: int = Field(..., ge=1)
    train: Literal["none", "all"] | TrainSpec = Field(
        "none", description="none | all | {last_stages|last_blocks|modules}"
    )
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    bn: Literal["frozen", "train", "frozen_all"] = Field(
        "frozen",
        description="BatchNorm statistics: frozen (in the frozen parts), train (everywhere), frozen_all (also in "
        "the parts that train; their scale and shift still learn - Keras' advice for fine-tuning)",
    )


def _default_phases() -> list[PhaseConfig]:
    return [
        PhaseConfig(name="head", epochs=2, train="none", optimizer=OptimizerConfig(lr=1e-3)),
        PhaseConfig(name="finetune", epochs=2, train="all", optimizer=OptimizerConfig(lr=1e-4)),
    ]


class EmaConfig(Strict):
    """An exponential moving average of the weights (Lightning's EMAWeightAveraging), updated after every optimizer
    step. The averaged weights are what validation sees, what the checkpoints hold, and so what the final
    evaluation and the logged model use."""

    decay: float = Field(
        0.99,
        gt=0,
        lt=1,
        description="weight of the average per step; it spans about 1/(1-decay) optimizer steps, which should be "
        "well under the fit's steps (the first update copies the weights, the head's random start included)",
    )
    start_step: int = Field(0, ge=0, description="optimizer steps before the average starts (a copy of the weights)")


class FinetuneConfig(Strict):
    phases: list[PhaseConfig] = Field(default_factory=_default_phases, min_length=1)
    ema: EmaConfig | None = Field(None, description="weight averaging over the whole fit, e.g. {decay: 0.99}")


class EarlyStoppingConfig(Strict):
    enabled: bool = True
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=0, description="epochs; in a phase that is not the last, stopping ends the phase")
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(Strict):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    save_last: bool = True


class TrainerConfig(Strict):
    """Passed through to lightning.Trainer."""

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = Field(1, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    log_every_n_steps: int = Field(10, ge=1)
    num_sanity_val_steps: int = Field(
        0,
        ge=-1,
        description="val batches Lightning runs before training to catch a broken validation step; 0: fruitlab's "
        "validation step is its own tested code, not the user's, and the check cost ~0.7 s before the first step",
    )
    enable_progress_bar: bool = True
    deterministic: bool = False


class PerformanceConfig(Strict):
    """Speed knobs that change no result; each default was measured (see benchmarks/)."""

    channels_last: bool = Field(
        True, description="NHWC memory format: 1.3-2x faster convolutions on this CPU (oneDNN) and on GPUs"
    )
    image_cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="decode and shrink each image file once to the size the transforms resize it to, kept on disk "
        "($FRUITLAB_CACHE_DIR/images, else ~/.cache/fruitlab/images) for every epoch, run and trial; auto: where "
        "the pixels are the same (no random resized crop); on: also with crops, from twice that size",
    )
    feature_cache: Literal["auto", "off"] = Field(
        "auto",
        description="auto: a phase whose frozen part (the whole backbone, or its first stages) is deterministic and "
        "whose training images are not augmented or only flipped runs that part once per image and view, and "
        "trains the rest on the cached output (exact; training/featurecache.py says when it applies)",
    )
    feature_cache_views: int = Field(
        0,
        ge=0,
        description="with augmentation beyond flips: train cached phases on K augmented views per image, computed "
        "once (approximate: K fixed draws instead of a new one each epoch); 0 = such phases are not cached",
    )
    feature_cache_max_gb: float = Field(
        4.0, gt=0, description="largest cache kept in memory for one phase (train views + val); larger is not cached"
    )

    @field_validator("image_cache", "feature_cache", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads an unquoted off/on (`--set performance.feature_cache=off`) as a boolean: take it as meant."""
        if isinstance(value, bool):
            return ("on" if info.field_name == "image_cache" else "auto") if value else "off"
        return value

    feature_cache_disk_gb: float = Field(
        20.0,
        gt=0,
        description="the feature cache folder ($FRUITLAB_CACHE_DIR/features, else ~/.cache/fruitlab/features) "
        "keeps its most recently used files up to this size; delete the folder to empty it",
    )


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str | None = Field(
        None,
        description="MLflow experiment; default: the experiment file's name, or '<name>-<data>' when --set gives "
        "other data than the file's (data.dataset, data.root), so a user's folder never lands in the fruit demo's",
    )
    run_name: str | None = None
    log_model: bool = True
    tags: dict[str, str] = Field(default_factory=dict)


# -------------------------------------------------------------------------------------------------- sweep
class SweepParam(Strict):
    """One dimension of the search space; its key (in `sweep.params`) is a dotted experiment key."""

    type: Literal["float", "int", "categorical"]
    low: float | None = Field(None, description="float/int: smallest value")
    high: float | None = Field(None, description="float/int: largest value (included)")
    log: bool = Field(False, description="float/int: sample on a log scale (learning rates, weight decay)")
    step: float | None = Field(None, gt=0, description="float/int: only multiples of step above low")
    choices: list[Any] | None = Field(None, description="categorical: the values (numbers, strings, lists...)")

    @model_validator(mode="after")
    def _range(self) -> SweepParam:
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("categorical needs `choices` (a non-empty list) and no low/high")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"{self.type} needs `low` and `high` (and no choices)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: true needs low > 0 and no step")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("int needs whole-number low and high")
        return self


class PrunerConfig(Strict):
    """Stops unpromising trials on the per-epoch metric; `pruner: median` is short for `{name: median}`."""

    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(2, ge=0, description="median: trials that must complete before any is pruned")
    warmup_epochs: int = Field(1, ge=0, description="median: epochs every trial runs before it may be pruned")
    reduction_factor: int = Field(3, ge=2, description="hyperband: 1/factor of the trials go on at each rung")


class SweepConfig(Strict):
    """An Optuna search over this experiment (`fruitlab sweep`); each trial is one fit, a nested MLflow run."""

    metric: str = Field("val/class/acc", description="per-epoch metric to optimise and prune on")
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int = Field(20, ge=1, description="trials in the study, all workers together")
    timeout: float | None = Field(None, gt=0, description="seconds; after it this worker starts no new trial")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: PrunerConfig = PrunerConfig()
    seed: int = Field(42, description="sampler seed; trial k samples with seed + k, so workers differ")
    params: dict[str, SweepParam] = Field(..., min_length=1, description="dotted experiment key -> its range")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="trials to run first when the study is created (the rest of their values sampled), e.g. "
        "the experiment's own values as a baseline: [{finetune.phases.0.optimizer.lr: 1.0e-3}]",
    )

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class Experiment(Strict):
    description: str = ""
    seed: int = 42
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    trainer: TrainerConfig = TrainerConfig()
    performance: PerformanceConfig = PerformanceConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig | None = Field(None, description="search space and study settings for `fruitlab sweep`")

    _name: str = PrivateAttr("adhoc")
    _source: str = PrivateAttr("<memory>")

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str:
        """The file this experiment came from, for error messages."""
        return self._source

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.finetune.phases)

    def where(self, key: str) -> str:
        """'(experiments/x.yaml: data.dataset)' for messages about one key."""
        return f"({self._source}: {key})"

    def flat(self) -> dict[str, Any]:
        """Every resolved value as a flat dotted dict (for MLflow params); the sweep's search space is not one."""
        return flatten(self.model_dump(mode="json", exclude={"sweep"}))


# ------------------------------------------------------------------------------------------------ loading
PACKAGED_EXPERIMENTS = Path(__file__).with_name("experiments")  # shipped with fruitlab (package data)
PACKAGED = "packaged"
PATH = "path"


@dataclass(frozen=True)
class ExperimentFile:
    """One experiment file found by name: where it is and where it comes from."""

    name: str  # the file's stem == `--experiment NAME`
    path: Path
    origin: str  # 'packaged', './experiments' (or the $FRUITLAB_EXPERIMENTS folder), or 'path' (given as a path)
    shadows: Path | None = None  # the packaged file of the same name that this local one overrides

    def shown_origin(self) -> str:
        return f"{self.origin} (overrides packaged)" if self.shadows else self.origin


def local_experiments_dir() -> Path:
    """$FRUITLAB_EXPERIMENTS, else ./experiments of the current folder (a user's own experiment files)."""
    return Path(os.environ.get("FRUITLAB_EXPERIMENTS", "experiments"))


def find_experiments(directory: Path | None = None) -> dict[str, ExperimentFile]:
    """Every experiment by name: the packaged ones, then the local folder's; a local file wins over a packaged file
    of the same name. `directory`: only the files in that folder."""
    if directory is not None:
        return {p.stem: ExperimentFile(p.stem, p, str(directory)) for p in sorted(directory.glob("*.yaml"))}
    found = {p.stem: ExperimentFile(p.stem, p, PACKAGED) for p in sorted(PACKAGED_EXPERIMENTS.glob("*.yaml"))}
    local = local_experiments_dir()
    origin = f"./{local}" if "FRUITLAB_EXPERIMENTS" not in os.environ else str(local)
    for path in sorted(local.glob("*.yaml")):
        packaged = found.get(path.stem)
        if packaged is not None and packaged.path.resolve() == path.resolve():
            continue  # $FRUITLAB_EXPERIMENTS names the packaged folder itself
        found[path.stem] = ExperimentFile(path.stem, path, origin, shadows=packaged.path if packaged else None)
    return dict(sorted(found.items()))


def list_experiments(directory: Path | None = None) -> dict[str, Path]:
    return {name: found.path for name, found in find_experiments(directory).items()}


def describe_experiment(path: Path) -> str:
    """The one-line description, read without validating the whole file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return "(invalid YAML)"
    return (
        str(data.get("description", "")).strip().splitlines()[0]
        if isinstance(data, dict) and data.get("description")
        else ""
    )


def find_experiment(name_or_path: str, directory: Path | None = None) -> ExperimentFile:
    """A path to a .yaml file, or a name looked up in ./experiments and the packaged experiments."""
    known = find_experiments(directory)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path or os.sep in name_or_path:
        if path.is_file():
            return ExperimentFile(path.stem, path, PATH)
        named = f"; did you mean the experiment -e {path.stem}?" if path.stem in known else ""
        raise ConfigError(f"experiment file {name_or_path} does not exist ({path.absolute()}){named}")
    if name_or_path in known:
        return known[name_or_path]
    hint = did_you_mean(name_or_path, known)
    looked = (
        str(directory)
        if directory is not None
        else f"{local_experiments_dir().absolute()} and the packaged experiments ({PACKAGED_EXPERIMENTS})"
    )
    raise ConfigError(
        f"unknown experiment {name_or_path!r}{hint} (known: {', '.join(known) or 'none'}; looked in {looked}); "
        "or give the path of a .yaml file, or write one for your images with `fruitlab init FOLDER`"
    )


def resolve_experiment_path(name_or_path: str, directory: Path | None = None) -> Path:
    return find_experiment(name_or_path, directory).path


def load_experiment(name_or_path: str, overrides: list[str] | None = None, directory: Path | None = None) -> Experiment:
    """Read, merge --set overrides into, and validate one experiment file."""
    found = find_experiment(name_or_path, directory)
    path = found.path
    if found.shadows:
        log.info("experiment %r: %s, which overrides the packaged one (%s)", found.name, path, found.shadows)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    file_data = _data_of(raw)  # before any --set
    for item in overrides or []:
        apply_override(raw, item)
    exp = validate_experiment(raw, source=str(path), name=path.stem)
    if exp.tracking.experiment is None and _data_key(exp.data.dataset, exp.data.root) != file_data:
        exp.tracking.experiment = f"{exp.name}-{_data_label(exp.data)}"
    return exp


def _data_of(raw: dict[str, Any]) -> tuple[Any, Any]:
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    return _data_key(data.get("dataset", DataConfig.model_fields["dataset"].default), data.get("root"))


def _data_key(dataset: Any, root: Any) -> tuple[Any, Any]:
    """Which data: a registered dataset is itself wherever its copy lies (data.root); a folder is its path."""
    return dataset, root if dataset == "image_folder" else None


def _data_label(data: DataConfig) -> str:
    """A user's folder by its name, a registered dataset by its own: '<experiment>-<this>' keeps a fit on other data
    than the file's (e.g. `-e quickstart --set data.dataset=image_folder --set data.root=~/photos`) out of the file's
    MLflow experiment."""
    return Path(data.root).expanduser().name if data.root and data.dataset == "image_folder" else data.dataset


def validate_experiment(raw: dict[str, Any], source: str = "<memory>", name: str = "adhoc") -> Experiment:
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    exp._name, exp._source = name, source
    return exp


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML) to the raw mapping, in place."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.batch_size=16")
    key, _, text = item.partition("=")
    if not key.strip() or any(not part.strip() for part in key.strip().split(".")):
        raise ConfigError(
            f"--set {item!r}: the key before '=' is {'empty' if not key.strip() else 'missing a part'}; "
            "expected a dotted key, e.g. --set data.batch_size=16 (`fruitlab check -e NAME` validates a file)"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(
                    f"--set {key}: index {idx} is out of range ({'.'.join(parts[:i])} has {len(node)} items)"
                )
            node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping")
        nxt = node.get(part)
        if nxt is None:
            # Fill in the schema default so `--set finetune.phases.1.epochs=3` works without restating the list.
            nxt = _schema_default(parts[: i + 1])
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _schema_default(path: list[str]) -> Any:
    value: Any = Experiment().model_dump(mode="json")
    for part in path:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return {}
    return value if isinstance(value, dict | list) else {}


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s)"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(loc[:-1])
            hint = did_you_mean(loc[-1], allowed)
            lines.append(f"  {key}: unknown key{hint} (allowed here: {', '.join(sorted(allowed))})")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's name in loc ('TrainSpec', "literal['none','all']"); users never wrote it.
    return isinstance(part, str) and (part[:1].isupper() or part.startswith(("literal[", "function-")))


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = Experiment
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = value
    return out


def short_key(key: str) -> str:
    """finetune.phases.0.optimizer.lr -> p0.lr: a flat key as a column or row header (sweep and compare tables)."""
    return key.replace("finetune.phases.", "p").replace("optimizer.", "").replace("data.augment.", "aug.")


def dump_yaml(exp: Experiment) -> str:
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
