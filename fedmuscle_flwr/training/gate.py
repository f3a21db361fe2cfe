"""Validation gates on a contrastive update (*beyond the paper*): decide, keep or roll back.

``gate = "validation"`` judges the contrastive steps alone, right after them;
``gate = "paired"`` runs the round twice from the same state, with and without its
contrastive update, and keeps the end with the lower validation loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fedmuscle_flwr.payload import UserPayload

if TYPE_CHECKING:
    from fedmuscle_flwr.training.trainer import Trainer

__all__ = ["gate_decision", "paired_round", "validation_gate"]


def gate_decision(
    before: float, after: float, *, scale: float, tolerance: float = 0.0, max_scale: float = 1.0
) -> tuple[bool, float]:
    """The validation gate: keep a contrastive update, and the user's next lambda scale.

    An update is kept when the validation loss did not rise by more than ``tolerance``
    (relative): ``after <= before * (1 + tolerance)``, or ``after <= before`` when
    ``before`` is not positive. Kept: the scale doubles, up to ``max_scale`` (1: back to
    the configured lambda; more: a user whose partners keep helping it contrasts more
    strongly). Not kept (the caller rolls the update back): the scale halves, so a user
    whose partners keep hurting it contrasts ever more weakly, and comes back as soon as
    an update helps.
    """
    limit = before * (1 + tolerance) if before > 0 else before
    kept = after <= limit
    return kept, (min(max_scale, scale * 2) if kept else scale / 2)


def validation_gate(trainer: Trainer, update: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run ``update`` (the contrastive steps) and keep it only if the gate lets it pass.

    Not kept: model and optimiser are rolled back. Returns the update's metrics with
    ``gate-kept`` (1 or 0) and the validation losses before and after.
    """
    before = trainer.validation_loss()
    snapshot = trainer._snapshot()
    result = update()
    after = trainer.validation_loss()
    kept, trainer.gate_scale = gate_decision(before, after, **_settings(trainer))
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
    (within ``gate-tolerance``).
    """
    start = trainer._snapshot(full=True)
    alone = {"train-loss": trainer.supervised_update()}
    alone_loss = trainer.validation_loss()
    alone_state = trainer._snapshot(full=True)
    trainer._restore(start)
    result = trainer._round_steps(indices, payload, weight)
    joined_loss = trainer.validation_loss()
    kept, scale = gate_decision(alone_loss, joined_loss, **_settings(trainer))
    if not kept:
        trainer._restore(alone_state)
        result["train-loss"] = alone["train-loss"]
    trainer.gate_scale = scale
    return result | {
        "gate-kept": float(kept),
        "validation-loss-alone": alone_loss,
        "validation-loss-joined": joined_loss,
    }


def _settings(trainer: Trainer) -> dict[str, float]:
    return {
        "scale": trainer.gate_scale,
        "tolerance": trainer.settings.gate_tolerance,
        "max_scale": trainer.settings.gate_max_scale,
    }
