"""Class labels as the class-conditional families take them, from `generate(condition=...)` and
`zoo.sample --label`: one label for all samples or one each, checked against the model's classes.

    labels = class_labels([3], n=8, num_classes=10, family="ddpm")    # tensor([3, 3, ..., 3])
"""

from __future__ import annotations

from typing import Any

import torch


def class_labels(
    condition: Any,
    n: int,
    num_classes: int,
    *,
    family: str,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """`condition` as `n` class labels, a long tensor (n,) on `device`; None when `condition` is None.

    `condition` is one label for every sample or one per sample (an int, a sequence or a tensor). A model
    with `num_classes` 0 is unconditional and refuses any label; the message names it as `family`."""
    if condition is None:
        return None
    if num_classes <= 0:
        raise ValueError(f"this {family} is unconditional (trained without labels): it takes no --label")
    labels = torch.as_tensor(condition, dtype=torch.long).reshape(-1).to(device)
    if len(labels) == 1:
        labels = labels.expand(n)
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} samples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.tolist()[:8]}")
    return labels
