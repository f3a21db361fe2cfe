"""Partners ranked by what they have done for a user: ``partner-selection = "gain"``.

*Beyond the paper.* Under a validation gate every user measures, each round, what its
contrastive update did to its own validation loss: the paired gate runs the round with and
without it (``validation-loss-alone`` and ``-joined``), the single gate before and after it
(``validation-loss-before`` and ``-after``). That relative gain, ``(without - with) /
without``, is credited to each partner the update was contrasted with. Ranking a user's
candidates by the mean gain credited to them keeps the partners whose representations have
helped this user's task, whatever their similarity to it (linear CKA favours partners that
already agree, e.g. other image models, over the text models that read the label off a
caption). A candidate never tried yet ranks above every tried one, by CKA, so each pair is
tried early; ``partner-exploration`` keeps random slots as with ``"relevance"``.

Everything comes from the run's round records (:class:`~fedmuscle_flwr.results.RoundRecord`:
``partners`` and ``metrics``), so there is no state of its own to checkpoint, and the
scores use only what the server already receives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from torch import Tensor

from fedmuscle_flwr.results import RoundRecord

__all__ = ["UNTRIED", "credited_gains", "gain_scores", "round_gain"]

#: Score offset of a never-tried candidate: above any mean gain, ordered by its CKA.
UNTRIED = 10.0
#: (without, with) validation-loss metric pairs of the two gates, paired first.
GAIN_METRICS = (
    ("validation-loss-alone", "validation-loss-joined"),
    ("validation-loss-before", "validation-loss-after"),
)


def round_gain(metrics: dict[str, float]) -> float | None:
    """The relative validation-loss gain of one user's contrastive update in one round.

    ``(without - with) / without`` from the gate's two losses; None when the round had no
    gated contrastive update (no payload, gate off, or a non-positive loss).
    """
    for without_key, with_key in GAIN_METRICS:
        if without_key in metrics and with_key in metrics:
            without, joined = float(metrics[without_key]), float(metrics[with_key])
            if without > 0 and math.isfinite(without) and math.isfinite(joined):
                return (without - joined) / without
    return None


def credited_gains(rounds: Iterable[RoundRecord]) -> dict[tuple[str, str], list[float]]:
    """``{(user, partner): [gain, ...]}``: each round's gain credited to each of its partners."""
    credits: dict[tuple[str, str], list[float]] = {}
    for record in rounds:
        for user, partners in record.partners.items():
            gain = round_gain(record.metrics.get(user, {}))
            if gain is None:
                continue
            for partner in partners:
                credits.setdefault((user, partner), []).append(gain)
    return credits


def gain_scores(users: Sequence[str], rounds: Iterable[RoundRecord], similarity: Tensor) -> Tensor:
    """(N, N) scores over ``users``: mean credited gain, or ``UNTRIED + CKA`` if never tried.

    ``similarity`` is the round's (N, N) linear CKA over the same order of users; the
    result feeds :func:`fedmuscle_flwr.aggregation.select_relevant_partners` (highest first).
    """
    if tuple(similarity.shape) != (len(users), len(users)):
        raise ValueError(
            f"similarity must be ({len(users)}, {len(users)}), got {tuple(similarity.shape)}"
        )
    credits = credited_gains(rounds)
    scores = similarity.detach().double().cpu() + UNTRIED
    for row, user in enumerate(users):
        for col, partner in enumerate(users):
            gains = credits.get((user, partner))
            if gains and row != col:
                scores[row, col] = sum(gains) / len(gains)
    return scores
