"""Validation gates on a contrastive update (*beyond the paper*): decide, keep or roll back.

``gate = "validation"`` judges the contrastive steps alone, right after them;
``gate = "paired"`` runs the round twice from the same state, with and without its
contrastive update, and keeps the better end. "Better" is ``gate-criterion``: the lower
validation loss, or the higher validation primary metric with the loss breaking ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fedmuscle_flwr.payload import UserPayload

if TYPE_CHECKING:
    from fedmuscle_flwr.training.trainer import Trainer

__all__ = ["gate_decision", "paired_round", "validation_gate"]


def gate_decision(
    before: float,
    after: float,
    *,
    scale: float,
    tolerance: float = 0.0,
    max_scale: float = 1.0,
    min_scale: float = 0.0,
    metric_before: float | None = None,
    metric_after: float | None = None,
) -> tuple[bool, float]:
    """The validation gate: keep a contrastive update, and the user's next lambda scale.

    ``before`` / ``after`` are validation losses without and with the update. Given both
    ``metric_before`` and ``metric_after`` (validation primary metric, higher is better)
    and they differ, the update is kept when the metric rose. Otherwise it is kept when the
    validation loss did not rise by more than ``tolerance`` (relative):
    ``after <= before * (1 + tolerance)``, or ``after <= before`` when ``before`` is not
    positive. Kept: the scale doubles, up to ``max_scale`` (1: back to the configured
    lambda; more: a user whose partners keep helping it contrasts more strongly). Not kept
    (the caller rolls the update back): the scale halves, down to ``min_scale``, so a user
    whose partners keep hurting it contrasts ever more weakly (``min_scale`` 1: lambda never
    shrinks, the gate only rolls back), and comes back as soon as an update helps.
    """
    if metric_before is not None and metric_after is not None and metric_before != metric_after:
        kept = metric_after > metric_before
    else:
        limit = before * (1 + tolerance) if before > 0 else before
        kept = after <= limit
    return kept, (min(max_scale, scale * 2) if kept else max(min_scale, scale / 2))


def validation_gate(trainer: Trainer, update: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run ``update`` (the contrastive steps) and keep it only if the gate lets it pass.

    Not kept: model and optimiser are rolled back. Returns the update's metrics with
    ``gate-kept`` (1 or 0) and the validation losses before and after.
    """
    before, metric_before = trainer.validation_loss(), _validation_metric(trainer)
    snapshot = trainer._snapshot()
    result = update()
    after, metric_after = trainer.validation_loss(), _validation_metric(trainer)
    kept, trainer.gate_scale = gate_decision(
        before, after, metric_before=metric_before, metric_after=metric_after, **_settings(trainer)
    )
    if not kept:
        trainer._restore(snapshot)
    return result | {
        "gate-kept": float(kept),
        "validation-loss-before": before,
        "validation-loss-after": after,
    }


def paired_round(
    trainer: Trainer, indices: Sequence[int], payload: UserPayload, weight: float | None
) -> dict[str, float]:
    """The round with and without its contrastive update; the user keeps the better end.

    Both runs start from the same state (model, optimisers, batch order, random state) and
    see the same minibatches; the contrastive one is kept when its validation loss is lower
    (within ``gate-tolerance``; or, with ``gate-criterion = "metric"``, when its validation
    primary metric is higher, the loss breaking ties).
    """
    start = trainer._snapshot(full=True)
    alone = {"train-loss": trainer.supervised_update()}
    alone_loss, alone_metric = trainer.validation_loss(), _validation_metric(trainer)
    alone_state = trainer._snapshot(full=True)
    trainer._restore(start)
    result = trainer._round_steps(indices, payload, weight)
    joined_loss, joined_metric = trainer.validation_loss(), _validation_metric(trainer)
    kept, scale = gate_decision(
        alone_loss,
        joined_loss,
        metric_before=alone_metric,
        metric_after=joined_metric,
        **_settings(trainer),
    )
    if not kept:
        trainer._restore(alone_state)
        result["train-loss"] = alone["train-loss"]
    trainer.gate_scale = scale
    return result | {
        "gate-kept": float(kept),
        "validation-loss-alone": alone_loss,
        "validation-loss-joined": joined_loss,
    }


def _validation_metric(trainer: Trainer) -> float | None:
    """The validation primary metric where ``gate-criterion = "metric"``, else None."""
    if trainer.settings.gate_criterion != "metric":
        return None
    return trainer.validation_metric()


def _settings(trainer: Trainer) -> dict[str, float]:
    return {
        "scale": trainer.gate_scale,
        "tolerance": trainer.settings.gate_tolerance,
        "max_scale": trainer.settings.gate_max_scale,
        "min_scale": trainer.settings.gate_min_scale,
    }
