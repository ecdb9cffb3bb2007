"""Exponential moving average of a model's weights.

    shadow ← rate · shadow + (1 − rate) · param        (buffers are copied)

The trainers call `update` once per OPTIMIZER step — not on gradient-accumulation micro-steps and
not when a mixed-precision step was skipped for overflowing gradients (upstream updated the EMA on
every micro-step). The average is kept as a full copy of the module (`EMA.module`) so that it can be
evaluated, exported or used for encoding directly; its parameters stay float32 whatever the
training precision.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["EMA"]


class EMA:
    """Moving average of `model`'s parameters.

    Args:
        model: the (unwrapped) module to average; the copy is taken now.
        rate: decay per update (upstream 0.9999).
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must lie in [0, 1), got {rate}")
        self.rate = float(rate)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        for p in self.module.parameters():
            if p.is_floating_point() and p.dtype != torch.float32 and p.dtype != torch.float64:
                p.data = p.data.float()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards `model`'s current weights (call after an optimizer step)."""
        params = dict(model.named_parameters())
        for name, shadow in self.module.named_parameters():
            if name not in params:
                raise KeyError(f"EMA: the model has no parameter {name!r} (was it built from a different model?)")
            shadow.lerp_(params[name].detach().to(shadow.dtype), 1.0 - self.rate)
        buffers = dict(model.named_buffers())
        for name, shadow in self.module.named_buffers():
            if name in buffers:
                shadow.copy_(buffers[name])
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """{"rate", "num_updates", "shadow": the averaged module's state_dict}."""
        return {"rate": self.rate, "num_updates": self.num_updates, "shadow": self.module.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["shadow"], strict=True)
        self.num_updates = int(state["num_updates"])
        if float(state["rate"]) != self.rate:
            logger.info("EMA rate %.6g from the checkpoint replaced by the configured %.6g", float(state["rate"]), self.rate)

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (e.g. for evaluation)."""
        model.load_state_dict(self.module.state_dict(), strict=True)
