"""A ClientApp that trains honestly but sends a lying Z (:mod:`fedmuscle_flwr.attacks`).

For tests and the attack table of docs/results.md; never part of a normal run.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedmuscle_flwr import wire
from fedmuscle_flwr.attacks import ATTACKS

__all__ = ["lying_client_app"]


def lying_client_app(honest: ClientApp, *, liar: str, attack: str, seed: int = 0) -> ClientApp:
    """A ClientApp that answers like ``honest``, except that user ``liar`` sends ``attack``."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {sorted(ATTACKS)}, got {attack!r}")
    app = ClientApp()
    generator = torch.Generator().manual_seed(seed)
    sent: dict[str, torch.Tensor] = {}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = honest(msg, context)
        content = reply.content
        who = content.config_records.get("user")
        user = str(who["user-id"]) if who is not None else ""
        if user != liar or wire.REPRESENTATION_KEY not in content.array_records:
            return reply
        z = torch.from_numpy(content.array_records[wire.REPRESENTATION_KEY]["z"].numpy())
        lie = ATTACKS[attack](z, generator, sent.get(user)).to(torch.float32)
        sent[user] = z  # what a replay sends next round: this round's honest Z
        content[wire.REPRESENTATION_KEY] = ArrayRecord(
            {"z": Array(np.ascontiguousarray(lie.numpy()))}
        )
        return reply

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return honest(msg, context)

    return app
