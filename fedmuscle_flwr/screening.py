"""Screening arrived representations for users who lie (*beyond the paper*).

Every user's Z_n of a round encodes the same public batch, so honest users' similarity
structures (their centred Gram matrices of Z_n Z_n^T) agree with each other beyond
chance, whatever their model, task or modality: images alike are alike to every honest
encoder, and the captions describe the images. A Z that does not come from the batch it
claims to encode (random vectors, a constant row, its rows shuffled, a replay of an
earlier round's Z) agrees with the others no more than a row-shuffled copy would.

Round score of user n: the linear CKA between its centred Gram and the mean of the
others' (unit-normalised) centred Grams, minus its mean under random row permutations of
Z_n, in units of the permutations' standard deviation: a z-statistic, about 0 at chance.
One public batch of 64 samples gives a noisy statistic, so the evidence accumulates: a
user's score is Stouffer's combination of its last round scores (up to
``WINDOW_ROUNDS``), sum / sqrt(rounds), which grows like sqrt(rounds) for an honest user
and stays about 0 for one at chance; a user cannot bank honest rounds to lie later. A
score below the threshold (default 2: under chance, a score is standard normal, so a
user at chance passes it in 2 % of rounds) flags the user; with ``exclude`` a flagged user
is left out of the payloads once it has been scored in ``min_rounds`` rounds (default 5, a
full window: an honest user whose task differs from everyone else's can start slowly; in
the default federation the one segmentation user scored 1.8, 2.1, 2.3 in its first three
rounds and 5.2 by the fifth), and comes back as soon as its score passes again.

What this cannot see: linear CKA is invariant to rotations of a representation space, so
a rotated honest Z scores as honest (docs/security.md); a crafted Z that keeps the batch's
structure also passes, and is then an honest-looking partner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from fedmuscle_flwr.config import SCREENING_MODES

__all__ = ["MIN_ROUNDS", "WINDOW_ROUNDS", "Screen", "combined_score", "round_scores", "screen"]

#: Rounds a user must have been scored in before ``exclude`` may leave it out.
MIN_ROUNDS = 5
#: The evidence is the round scores of the last this many rounds: honesty cannot be banked
#: by a user who turns to lying, and a user wrongly flagged recovers within as many rounds.
WINDOW_ROUNDS = 5

Key = TypeVar("Key")


@dataclass(frozen=True)
class Screen:
    """One user's screening outcome in one round."""

    round_score: float  # this round's agreement with the others, z units (0: chance)
    score: float  # evidence: Stouffer's combination of the last WINDOW_ROUNDS round scores
    flagged: bool  # score below the threshold
    excluded: bool  # flagged, mode "exclude", and scored in at least MIN_ROUNDS rounds

    def to_dict(self) -> dict[str, float | bool]:
        """The ``rounds[].screening`` entry of results.json."""
        return {
            "score": self.score,
            "excluded": self.excluded,
            "flagged": self.flagged,
            "round-score": self.round_score,
        }


def round_scores(
    representations: Tensor, *, permutations: int = 16, generator: torch.Generator
) -> Tensor:
    """Each user's agreement with the consensus of the others this round, (N,) z-scores.

    ``representations`` is (N, B, d). For user n: c_n = <U_n, mean_{m != n} U_m> /
    ||mean_{m != n} U_m|| with U the unit-norm centred Gram matrices, against the same
    quantity for ``permutations`` random row permutations of Z_n (drawn from
    ``generator``): (c_n - mean) / std. A Gram without structure (a constant Z) scores 0;
    with fewer than two users every score is +inf (nothing to agree with).
    """
    num_users, batch, _ = representations.shape
    if num_users < 2:
        return torch.full((num_users,), math.inf)
    z = representations.detach().double().cpu()
    grams = z @ z.transpose(1, 2)
    centre = torch.eye(batch, dtype=grams.dtype) - 1.0 / batch
    centred = centre @ grams @ centre
    norms = centred.flatten(1).norm(dim=1)
    alive = norms > 1e-6 * batch  # unit rows: a real centred Gram has norm of order 1 to B
    unit = centred / norms.clamp_min(1e-30)[:, None, None]
    unit[~alive] = 0.0
    consensus = (unit.sum(0, keepdim=True) - unit) / (num_users - 1)  # (N, B, B): the others'
    size = consensus.flatten(1).norm(dim=1)
    observed = (unit * consensus).sum((1, 2)) / size.clamp_min(1e-30)
    perms = torch.stack([torch.randperm(batch, generator=generator) for _ in range(permutations)])
    rows, cols = perms[:, :, None], perms[:, None, :]
    nulls = []
    for start in range(0, num_users, 64):  # (chunk, P, B, B) at a time: bounded memory
        chunk = slice(start, start + 64)
        shuffled = unit[chunk][:, rows, cols]  # P U_n P^T for every permutation P
        nulls.append((shuffled * consensus[chunk, None]).sum((2, 3)))
    null = torch.cat(nulls) / size.clamp_min(1e-30)[:, None]  # (N, P)
    scores = (observed - null.mean(1)) / null.std(1).clamp_min(1e-12)
    return torch.where(alive & (size >= 1e-12), scores, 0.0).float()


def combined_score(scores: Sequence[float]) -> float:
    """Stouffer's combination of independent z-scores: sum / sqrt(count)."""
    finite = [s for s in scores if math.isfinite(s)]
    if len(finite) < len(scores):
        return math.inf
    return sum(finite) / math.sqrt(len(finite)) if finite else math.inf


def screen(
    representations: Mapping[Key, Tensor],
    *,
    mode: str,
    generator: torch.Generator,
    history: Mapping[Key, Sequence[float]] | None = None,
    threshold: float = 2.0,
    permutations: int = 16,
    min_rounds: int = MIN_ROUNDS,
    window: int = WINDOW_ROUNDS,
) -> dict[Key, Screen]:
    """Score every arrived Z of a round; flag (and with "exclude", exclude) users at chance.

    ``history`` holds each user's earlier round scores (from results.json, so nothing
    else needs saving across a resume); the last ``window`` of them, with this round's,
    make its score. "flag" only records; "exclude" also marks flagged
    users excluded once scored in ``min_rounds`` rounds (this one included): the caller
    leaves them out of every payload, so they neither receive partners' Z nor serve as a
    partner. Keys are visited in sorted order.
    """
    if mode not in SCREENING_MODES:
        raise ValueError(f"screening mode must be one of {SCREENING_MODES}, got {mode!r}")
    keys = sorted(representations)  # type: ignore[type-var]
    if mode == "off" or not keys:
        return {}
    stacked = torch.stack([representations[k] for k in keys])
    now = round_scores(stacked, permutations=permutations, generator=generator).tolist()
    result = {}
    for key, current in zip(keys, now, strict=True):
        past = list((history or {}).get(key, ()))
        score = combined_score([*past, current][-window:])
        flagged = score < threshold
        excluded = flagged and mode == "exclude" and len(past) + 1 >= min_rounds
        result[key] = Screen(round_score=current, score=score, flagged=flagged, excluded=excluded)
    return result
