"""The optimizer every fit uses, and the bench's raw loops with it."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    # foreach: one call per step over all tensors. On CPU torch's default is a Python loop over the tensors; the
    # arithmetic is the same (same weights to the last bit), the step 10-15 % faster (PERFORMANCE.md).
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, foreach=True)
