"""LastValidation: the final evaluation reuses the last validation pass only for the weights that made it."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from fruitlab.training.final_evaluation import LastValidation


def _pass(keeper: LastValidation, trainer: SimpleNamespace, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    keeper.on_validation_epoch_start(trainer, None)
    for i, (logits, labels) in enumerate(batches):
        keeper.on_validation_batch_end(trainer, None, {"class": logits}, (torch.zeros(len(labels), 3), labels), i)
    keeper.on_validation_epoch_end(trainer, None)


def test_keeps_the_last_pass_for_its_step_only():
    keeper = LastValidation()
    trainer = SimpleNamespace(sanity_checking=False, world_size=1, global_step=10)
    first = [
        (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])),
        (torch.tensor([[0.0, 3.0]]), torch.tensor([0])),
    ]
    _pass(keeper, trainer, first)
    trainer.global_step = 20
    last = [(torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]), torch.tensor([1, 1, 0]))]
    _pass(keeper, trainer, last)

    assert keeper.predictions(10) is None  # the best checkpoint is an earlier epoch's: run the model again
    probs, labels = keeper.predictions(20)
    assert torch.equal(labels["class"], torch.tensor([1, 1, 0]))
    assert torch.allclose(probs["class"], last[0][0].softmax(-1))


def test_sanity_check_and_several_processes_keep_nothing():
    keeper = LastValidation()
    batch = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))]
    _pass(keeper, SimpleNamespace(sanity_checking=True, world_size=1, global_step=0), batch)
    assert keeper.predictions(0) is None
    _pass(keeper, SimpleNamespace(sanity_checking=False, world_size=2, global_step=5), batch)  # val is sharded
    assert keeper.predictions(5) is None
