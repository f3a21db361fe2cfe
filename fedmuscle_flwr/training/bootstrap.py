"""The fallback's paired bootstrap: a lead on the validation split that is more than luck.

``fallback-criterion = "bootstrap"`` (*beyond the paper*): a user keeps its joined model
only when it beats the model trained alone on most paired bootstrap resamples of the
validation split (``fallback-confidence``, default 0.8), not on the one split it happens
to hold. On a validation split of a few dozen examples a lead of one or two examples is
noise; this asks for a lead that survives resampling. Both models are scored on the same
resampled examples each time (paired), which is what makes small leads detectable at all.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from fedmuscle_flwr.tasks.base import Task

__all__ = ["RESAMPLES", "paired_bootstrap_share"]

#: Bootstrap resamples per decision (the share's standard error is at most 0.05).
RESAMPLES = 100


def paired_bootstrap_share(
    task: Task,
    num_classes: int,
    joined: Tensor,
    alone: Tensor,
    target: Tensor,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> float:
    """Share of paired resamples on which ``joined`` scores higher than ``alone``.

    ``joined`` and ``alone`` are the two models' metric inputs for every validation
    example and ``target`` the shared targets (as :meth:`Task.metric_inputs` returns them,
    examples first). Each resample draws as many examples with replacement, from a
    generator seeded with ``seed`` (so the same resamples every call, and no draw from any
    training random state), and scores both models on the task's primary metric; a tie, or
    a metric undefined on a resample, counts one half.
    """
    count = len(target)
    if count == 0 or len(joined) != count or len(alone) != count:
        raise ValueError(
            f"joined, alone and target must hold the same examples (at least one), got "
            f"{len(joined)}, {len(alone)} and {count}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    metric = task.metric_objects(num_classes)[task.primary_metric]
    generator = torch.Generator().manual_seed(seed)

    def score(preds: Tensor, rows: Tensor) -> float:
        metric.reset()
        metric.update(preds[rows], target[rows])
        return float(metric.compute())

    wins = 0.0
    with warnings.catch_warnings():  # a resample may miss a label: torchmetrics warns
        warnings.simplefilter("ignore")
        for _ in range(resamples):
            rows = torch.randint(count, (count,), generator=generator)
            ours, theirs = score(joined, rows), score(alone, rows)
            if math.isnan(ours) or math.isnan(theirs) or ours == theirs:
                wins += 0.5
            elif ours > theirs:
                wins += 1.0
    return wins / resamples
