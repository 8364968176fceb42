"""Per-task cross-entropy and how the tasks' losses combine: sum, fixed weights, or learned uncertainty weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fruitlab.config import LossConfig
from fruitlab.data.mixing import mixed_loss
from fruitlab.errors import ConfigError


class TaskLoss(nn.Module):
    """{task: logits (B, n_t)}, {task: labels (B,)} -> (objective, {task: cross-entropy}).

    `uncertainty` learns one log-variance s_t per task and minimises sum_t exp(-s_t) * L_t + s_t / 2
    (Kendall, Gal and Cipolla 2018, eq. 10 for a softmax likelihood): a task whose loss stays high gets a
    smaller weight, and the s_t / 2 term keeps the weights from collapsing to zero. Written here because no
    maintained library ships it as a plain loss module; it is a few lines.
    """

    def __init__(
        self,
        tasks: list[str],
        cfg: LossConfig | None = None,
        class_weights: dict[str, torch.Tensor] | None = None,
        where: str = "",
    ):
        super().__init__()
        cfg = cfg or LossConfig()
        self.tasks, self.combine, self.smoothing = list(tasks), cfg.combine, cfg.label_smoothing
        if cfg.combine == "weights":
            missing = [t for t in tasks if t not in cfg.weights]
            unknown = [t for t in cfg.weights if t not in tasks]
            if missing or unknown:
                raise ConfigError(
                    f"loss.weights {where} must give one weight per task {self.tasks} "
                    f"(missing: {missing or 'none'}; unknown: {unknown or 'none'})".replace("  ", " ")
                )
        self.fixed = {t: float(cfg.weights.get(t, 1.0)) if cfg.combine == "weights" else 1.0 for t in tasks}
        # One log-variance per task, starting at 0 (weight 1): the sum is where it starts.
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if cfg.combine == "uncertainty" else None
        for task, weights in (class_weights or {}).items():
            self.register_buffer(f"class_weights_{task}", torch.as_tensor(weights, dtype=torch.float32))

    def per_task(
        self,
        logits: dict[str, torch.Tensor],
        labels: dict[str, torch.Tensor],
        perm: torch.Tensor | None = None,
        lam: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy per task; for a mixup/cutmix batch (data/mixing.py) the lam-weighted pair of targets."""
        out = {}
        for t in self.tasks:
            weight = getattr(self, f"class_weights_{t}", None)

            def ce(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = weight) -> torch.Tensor:
                return F.cross_entropy(x, y, weight=weight, label_smoothing=self.smoothing)

            out[t] = mixed_loss(ce, logits[t], labels[t], perm, lam) if perm is not None else ce(logits[t], labels[t])
        return out

    def combine_losses(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.log_vars is None:
            terms = [self.fixed[t] * losses[t] for t in self.tasks]
        else:
            terms = [torch.exp(-s) * losses[t] + 0.5 * s for t, s in zip(self.tasks, self.log_vars, strict=True)]
        return torch.stack(terms).sum()

    def weights(self) -> dict[str, float]:
        """The weight each task's loss gets now (for logging)."""
        if self.log_vars is None:
            return dict(self.fixed)
        return {t: float(torch.exp(-s)) for t, s in zip(self.tasks, self.log_vars.detach(), strict=True)}
