"""What the strategy keeps between its calls: the round in flight and the one-round shift."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import Message
from torch import Tensor

from fedmuscle_flwr.payload import UserPayload

__all__ = ["NextRound", "RoundInFlight"]


@dataclass
class NextRound:
    """The one-round shift: what round t prepares for round t + 1.

    Round t asks for Z on ``indices`` (round t + 1's public batch); its replies fill
    ``payloads``, which round t + 1 sends with the same ``indices`` to contrast on.
    """

    round_id: int
    indices: tuple[int, ...]
    payloads: dict[int, UserPayload] = field(default_factory=dict)  # node id -> payload


@dataclass
class RoundInFlight:
    """Book-keeping of the round in flight."""

    started: float
    messages: dict[int, Message] = field(default_factory=dict)  # node id -> instruction
    downlink: dict[int, int] = field(default_factory=dict)  # node id -> bytes
    partners: dict[int, tuple[int, ...]] = field(default_factory=dict)  # node -> partner nodes
    next: NextRound | None = None  # what this round prepares (None: no Z asked for)
    errors: set[int] = field(default_factory=set)  # nodes whose round failed with an error
    # distillation: node -> (label space, class probabilities on the next batch)
    predictions: dict[int, tuple[str, Tensor]] = field(default_factory=dict)
    # distillation without predictions (distill-presence): node -> label space it learns from
    teacher_requests: dict[int, str] = field(default_factory=dict)
