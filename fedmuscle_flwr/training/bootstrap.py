"""The fallback's paired bootstrap: a lead on the validation split that is more than luck.

``fallback-criterion = "bootstrap"`` (*beyond the paper*): a user keeps its joined model
only when it beats the model trained alone on most paired bootstrap resamples of the
validation split (``fallback-confidence``, default 0.8), not on the one split it happens
to hold. On a validation split of a few dozen examples a lead of one or two examples is
noise; this asks for a lead that survives resampling. Both models are scored on the same
resampled examples each time (paired), which is what makes small leads detectable at all.

The built-in primary metrics (accuracy, mIoU, mAP) are scored on all resamples at once
in closed form (:mod:`fedmuscle_flwr.training.resampled`). Any other metric whose
torchmetrics state is a sum over examples has each example's state computed once and a
resample's state as their multiplicity-weighted sum (one matrix product); the rest are
updated and computed on each resample.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedmuscle_flwr.tasks.base import Task
from fedmuscle_flwr.training.resampled import resampled_scores

if TYPE_CHECKING:
    from torchmetrics import Metric

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
    rounds: int = 1,
) -> float:
    """Share of paired resamples on which ``joined`` scores higher than ``alone``.

    ``joined`` and ``alone`` are the two models' metric inputs for every validation
    example and ``target`` the shared targets (as :meth:`Task.metric_inputs` returns them,
    examples first). Each resample draws as many examples with replacement, from a
    generator seeded with ``seed`` (so the same resamples every call, and no draw from any
    training random state), and scores both models on the task's primary metric; a tie, or
    a metric undefined on a resample, counts one half.

    With ``rounds`` > 1 the inputs hold that many rounds' outputs of the same examples, one
    block of examples after another (round-major); a resample draws examples as above and
    scores each drawn example's rows of every round together.
    """
    total = len(target)
    if total == 0 or len(joined) != total or len(alone) != total:
        raise ValueError(
            f"joined, alone and target must hold the same examples (at least one), got "
            f"{len(joined)}, {len(alone)} and {total}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if rounds < 1 or total % rounds:
        raise ValueError(f"rounds must be >= 1 and divide the {total} rows, got {rounds}")
    count = total // rounds
    metric = task.metric_objects(num_classes)[task.primary_metric]
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(rounds) * count  # the rows of one example in every round
    draws = [
        (torch.randint(count, (count,), generator=generator) + offsets[:, None]).reshape(-1)
        for _ in range(resamples)
    ]
    counts = torch.stack([torch.bincount(rows, minlength=total) for rows in draws])
    closed_form = [resampled_scores(metric, preds, target, counts) for preds in (joined, alone)]
    with warnings.catch_warnings():  # a resample may miss a label: torchmetrics warns
        warnings.simplefilter("ignore")
        if closed_form[0] is not None and closed_form[1] is not None:  # the built-in metrics
            pairs = list(zip(closed_form[0].tolist(), closed_form[1].tolist(), strict=True))
        elif (states := _per_example_states(metric, (joined, alone), target)) is not None:
            # additive states: a resample's state is its rows' states, summed
            joined_scores, alone_scores = (_resampled_scores(metric, m, counts) for m in states)
            pairs = list(zip(joined_scores, alone_scores, strict=True))
        else:  # e.g. a plug-in's mAP (its states are lists): score each resample's rows
            pairs = [(_score(metric, joined, target, rows), _score(metric, alone, target, rows))
                     for rows in draws]  # fmt: skip
    wins = 0.0
    for joined_score, alone_score in pairs:
        if math.isnan(joined_score) or math.isnan(alone_score) or joined_score == alone_score:
            wins += 0.5
        elif joined_score > alone_score:
            wins += 1.0
    return wins / resamples


def _score(metric: Metric, preds: Tensor, target: Tensor, rows: Tensor) -> float:
    metric.reset()
    metric.update(preds[rows], target[rows])
    return float(metric.compute())


def _per_example_states(
    metric: Metric, models: tuple[Tensor, ...], target: Tensor
) -> list[dict[str, Tensor]] | None:
    """Each model's metric state of every example, ``{name: (n, *shape)}``; None if not additive.

    A metric is additive when all its states are tensors and the state of all examples
    is the sum of the examples' states (accuracy's stat scores, mIoU's confusion matrix),
    checked here on the first model. Then the metric of any multiset of examples is
    ``compute()`` on the multiplicity-weighted sum of their states (``merge_state``).
    """
    if metric.full_state_update or metric.dist_sync_on_step:
        return None
    metric.reset()
    if not all(isinstance(value, Tensor) for value in metric.metric_state.values()):
        return None
    per_model = []
    for preds in models:
        rows: dict[str, list[Tensor]] = {}
        for i in range(len(target)):
            metric.reset()
            metric.update(preds[i : i + 1], target[i : i + 1])
            for name, value in _tensor_state(metric).items():
                rows.setdefault(name, []).append(value.clone())
        per_model.append({name: torch.stack(values) for name, values in rows.items()})
    metric.reset()
    metric.update(models[0], target)
    for name, value in _tensor_state(metric).items():
        if not torch.equal(per_model[0][name].sum(0).to(value.dtype), value):
            return None
    return per_model


def _tensor_state(metric: Metric) -> dict[str, Tensor]:
    """The metric's state (its caller checked that every part is a tensor, not a list)."""
    return {name: value for name, value in metric.metric_state.items() if isinstance(value, Tensor)}


def _resampled_scores(metric: Metric, states: dict[str, Tensor], counts: Tensor) -> list[float]:
    """The metric on each resample (a row of example multiplicities in ``counts``)."""
    summed = {}
    for name, per_example in states.items():
        flat = per_example.reshape(len(per_example), -1).double()
        total = counts.double() @ flat
        if not per_example.dtype.is_floating_point:  # exact: integer counts of integer states
            total = total.round().to(per_example.dtype)
        summed[name] = total.reshape(len(counts), *per_example.shape[1:])
    scores = []
    for r in range(len(counts)):
        metric.reset()
        metric.merge_state({name: total[r] for name, total in summed.items()})
        scores.append(float(metric.compute()))
    return scores
