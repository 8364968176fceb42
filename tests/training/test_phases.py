"""The phase schedule: which parameters train, frozen BatchNorm, optimizers per phase, resume mid-phase."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from fruitlab.config import DataConfig, HeadConfig, ModelConfig, PhaseConfig, PreprocessConfig, TrainSpec
from fruitlab.data.datamodule import ImageDataModule
from fruitlab.models.classifier import build_classifier
from fruitlab.models.parts import backbone_groups, batchnorm_modules
from fruitlab.training.module import ClassifierModule
from fruitlab.training.phases import PhaseEarlyStopping, PhasePlan, PhaseSchedule

BACKBONE = "test_efficientnet"


def make_module(classes, phases) -> ClassifierModule:
    cfg = ModelConfig(backbone=BACKBONE, pretrained=False, head=HeadConfig())
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=32), classes)
    return ClassifierModule(model, PhasePlan(phases))


def make_trainer(tmp_path, max_epochs, callbacks=()) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        callbacks=[PhaseSchedule(), *callbacks],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )


def datamodule(splits, module) -> ImageDataModule:
    return ImageDataModule(splits, DataConfig(batch_size=4, num_workers=0), module.model.preprocess)


def trainable(module) -> set[str]:
    return {n for n, p in module.model.backbone.named_parameters() if p.requires_grad}


def bn_state(module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{buf}": getattr(bn, buf).clone()
        for name, bn in batchnorm_modules(module.model.backbone)
        for buf in ("running_mean", "running_var", "num_batches_tracked")
    }


PHASES = [
    PhaseConfig(name="head", epochs=1, train="none"),
    PhaseConfig(name="top", epochs=1, train=TrainSpec(last_stages=1), optimizer={"lr": 1e-4}),
    PhaseConfig(name="all", epochs=1, train="all", bn="train", optimizer={"name": "sgd", "lr": 1e-3}),
]


def test_each_phase_trains_exactly_its_parameters():
    module = make_module(["a", "b"], PHASES)
    plan, backbone = module.plan, module.model.backbone
    groups = backbone_groups(backbone, coarse=True)
    plan.apply(module.model)
    assert trainable(module) == set()
    assert all(p.requires_grad for p in module.model.head.parameters())
    opt = plan.build_optimizer(module.model)["optimizer"]
    assert [g["name"] for g in opt.param_groups] == ["head"]

    plan.advance(1)
    plan.apply(module.model)
    assert trainable(module) == set(groups[-1])
    opt = plan.build_optimizer(module.model)["optimizer"]
    assert isinstance(opt, torch.optim.Adam)
    assert [g["name"] for g in opt.param_groups] == ["head", "backbone"]
    assert len(opt.param_groups[1]["params"]) == len(groups[-1])

    plan.advance(2)
    plan.apply(module.model)
    assert trainable(module) == {n for n, _ in backbone.named_parameters()}
    assert isinstance(plan.build_optimizer(module.model)["optimizer"], torch.optim.SGD)


def test_module_names_and_bad_names():
    from fruitlab.errors import ConfigError
    from fruitlab.models.parts import select_trainable

    module = make_module(["a", "b"], PHASES)
    chosen = select_trainable(module.model.backbone, TrainSpec(modules=["conv_head", "blocks.4"]))
    assert chosen and all(n.startswith(("conv_head.", "blocks.4.")) for n in chosen)
    with pytest.raises(ConfigError, match="did you mean 'conv_head'"):
        select_trainable(module.model.backbone, TrainSpec(modules=["conv_haed"]), "(x.yaml: finetune.phases.1.train)")
    with pytest.raises(ConfigError, match="has 6"):
        select_trainable(module.model.backbone, TrainSpec(last_stages=9))


def test_frozen_batchnorm_statistics_stay_bit_identical(tmp_path, photo_splits):
    """Two real epochs with a frozen backbone: BN buffers unchanged although Lightning calls train() each epoch."""
    phases = [PhaseConfig(epochs=2, train="none", bn="frozen"), PhaseConfig(epochs=1, train="all", bn="train")]
    module = make_module(photo_splits.classes, phases)
    before = bn_state(module)
    weights_before = {n: p.clone() for n, p in module.model.backbone.named_parameters()}
    head_before = [p.clone() for p in module.model.head.parameters()]
    make_trainer(tmp_path, max_epochs=2).fit(module, datamodule=datamodule(photo_splits, module))
    after = bn_state(module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, weights_before[n]) for n, p in module.model.backbone.named_parameters())
    assert not all(torch.equal(a, b) for a, b in zip(head_before, module.model.head.parameters(), strict=True))


def test_unfrozen_phase_updates_batchnorm_statistics(tmp_path, photo_splits):
    phases = [PhaseConfig(epochs=1, train="none"), PhaseConfig(epochs=1, train="all", bn="train")]
    module = make_module(photo_splits.classes, phases)
    before = bn_state(module)
    make_trainer(tmp_path, max_epochs=2).fit(module, datamodule=datamodule(photo_splits, module))
    assert module.plan.index == 1
    after = bn_state(module)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_frozen_all_keeps_statistics_while_the_backbone_learns(tmp_path, photo_splits):
    phases = [PhaseConfig(epochs=1, train="none"), PhaseConfig(epochs=1, train="all", bn="frozen_all")]
    module = make_module(photo_splits.classes, phases)
    before = bn_state(module)
    bn_weights = {n: p.clone() for n, p in module.model.backbone.named_parameters() if ".bn" in n}
    make_trainer(tmp_path, max_epochs=2).fit(module, datamodule=datamodule(photo_splits, module))
    assert module.plan.index == 1
    after = bn_state(module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [
        n for n, p in module.model.backbone.named_parameters() if n in bn_weights and not torch.equal(p, bn_weights[n])
    ]
    assert len(changed) == len(bn_weights) > 0  # their scale and shift trained


def test_resume_in_the_middle_of_phase_two_keeps_the_phase_and_optimizer(tmp_path, photo_splits):
    phases = [
        PhaseConfig(name="head", epochs=1, train="none", optimizer={"name": "rmsprop", "lr": 1e-3}),
        PhaseConfig(name="top", epochs=3, train=TrainSpec(last_stages=2), optimizer={"name": "sgd", "lr": 1e-3}),
    ]
    module = make_module(photo_splits.classes, phases)
    make_trainer(tmp_path, max_epochs=2).fit(module, datamodule=datamodule(photo_splits, module))
    assert module.plan.index == 1 and module.plan.start_epoch == 1
    ckpt = tmp_path / "mid.ckpt"
    trainer_state = module.trainer
    trainer_state.save_checkpoint(ckpt)
    phase2_trainable = trainable(module)
    steps_per_epoch = trainer_state.num_training_batches

    # A fresh process would build everything from scratch in phase 0; resuming must land in phase 2 as it was.
    resumed = make_module(photo_splits.classes, phases)
    seen = {}

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            seen.setdefault("first", (pl_module.plan.index, trainable(pl_module), type(opt), len(opt.state)))

    trainer = make_trainer(tmp_path, max_epochs=4, callbacks=[Probe()])
    trainer.fit(resumed, datamodule=datamodule(photo_splits, resumed), ckpt_path=str(ckpt))
    index, names, opt_type, n_state = seen["first"]
    assert index == 1
    assert names == phase2_trainable  # not re-frozen
    assert opt_type is torch.optim.SGD
    assert n_state > 0  # momentum buffers restored from the checkpoint
    assert trainer.current_epoch == 4
    assert trainer.global_step == 4 * steps_per_epoch


def test_early_stopping_ends_a_phase_not_the_fit(tmp_path, photo_splits):
    """Patience runs out in phase 1 (val/loss can't improve with lr ~0): the fit moves on to phase 2."""
    phases = [
        PhaseConfig(epochs=5, train="none", optimizer={"lr": 1e-12}),
        PhaseConfig(epochs=2, train="all", bn="train", optimizer={"lr": 1e-3}),
    ]
    module = make_module(photo_splits.classes, phases)
    stopper = PhaseEarlyStopping(monitor="val/loss", patience=0, min_delta=1.0)
    trainer = make_trainer(tmp_path, max_epochs=7, callbacks=[stopper])
    trainer.fit(module, datamodule=datamodule(photo_splits, module))
    assert module.plan.index == 1
    assert module.plan.start_epoch < 5  # phase 1 ended before its 5 epochs
    assert trainer.current_epoch < 7  # and the last phase's stopping ended the fit


def test_layer_decay_gives_each_trainable_layer_a_geometric_rate():
    """layer_decay: timm's layer map of the backbone; the top layer at backbone_lr, each one below x decay."""
    from timm.models import group_parameters

    decay, backbone_lr, head_lr = 0.5, 1e-3, 1e-2
    phase = PhaseConfig(
        epochs=1,
        train=TrainSpec(last_stages=3),
        optimizer={"lr": head_lr, "backbone_lr": backbone_lr, "layer_decay": decay, "weight_decay": 1e-4},
    )
    module = make_module(["a", "b"], [phase])
    backbone = module.model.backbone
    module.plan.apply(module.model)
    opt = module.plan.build_optimizer(module.model)["optimizer"]

    layer_of = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())
    name_of = {id(p): n for n, p in backbone.named_parameters()}
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lr_of[name_of.get(id(p), "head")] = (group["lr"], group["weight_decay"])
    trainable_names = trainable(module)
    assert set(lr_of) - {"head"} == trainable_names  # exactly what trains, nothing frozen
    assert {top - layer_of[n] for n in trainable_names} == {0, 1, 2}  # three layers deep: three rates
    for name in trainable_names:
        lr, wd = lr_of[name]
        assert lr == pytest.approx(backbone_lr * decay ** (top - layer_of[name]))
        assert wd == (0.0 if backbone.get_parameter(name).ndim <= 1 else 1e-4)  # timm: no decay on 1-d params
    head_groups = [g for g in opt.param_groups if g["name"] == "head"]
    assert [g["lr"] for g in head_groups] == [head_lr]
    assert {g["name"] for g in opt.param_groups} == {"head", "backbone", "backbone-1", "backbone-2"}

    # A cosine schedule keeps the ratios: every group is scaled by the same factor.
    phase.schedule.name = "cosine"
    config = module.plan.build_optimizer(module.model)
    opt, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    before = [g["lr"] for g in opt.param_groups]
    opt.step()
    scheduler.step()
    ratios = {round(g["lr"] / b, 9) for g, b in zip(opt.param_groups, before, strict=True)}
    assert len(ratios) == 1 and ratios != {1.0}


def test_layer_decay_while_the_backbone_is_frozen_is_the_head_alone():
    phase = PhaseConfig(epochs=1, train="none", optimizer={"lr": 1e-3, "layer_decay": 0.7})
    module = make_module(["a", "b"], [phase])
    module.plan.apply(module.model)
    opt = module.plan.build_optimizer(module.model)["optimizer"]
    assert [g["name"] for g in opt.param_groups] == ["head"]
