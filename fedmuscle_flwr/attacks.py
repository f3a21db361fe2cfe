"""Lying users' representations: what a dishonest client can send instead of its Z.

Each attack is what a real lying client can compute from what it has: its own honest Z of
the round, the Z it sent before, and its own randomness. All of them pass the wire's
checks (finite, unit-norm rows of the right shape for the right round and batch digest).
For tests and the attack table of docs/results.md (``client_app.attacks`` wraps a
ClientApp with one); never part of a normal run.

- ``random``: random unit rows;
- ``constant``: one unit vector in every row;
- ``shuffle``: its honest Z with the rows permuted (right vectors, wrong samples);
- ``replay``: its honest Z of the previous round (which encodes another public batch);
- ``rotate``: its honest Z times a fixed random rotation (the structure kept, the space
  turned: what CKA-based screening cannot see);
- ``target``: two opposite unit vectors by the parity of the sample index, a structure
  crafted to pull partners toward a split the data does not have.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ATTACKS", "Attack"]


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows, dim=-1)


def _random(z: torch.Tensor, g: torch.Generator, _: torch.Tensor | None) -> torch.Tensor:
    return _unit(torch.randn(z.shape, generator=g))


def _constant(z: torch.Tensor, g: torch.Generator, _: torch.Tensor | None) -> torch.Tensor:
    return _unit(torch.randn(z.shape[-1], generator=g)).expand_as(z).clone()


def _shuffle(z: torch.Tensor, g: torch.Generator, _: torch.Tensor | None) -> torch.Tensor:
    return z[torch.randperm(z.shape[0], generator=g)]


def _replay(z: torch.Tensor, g: torch.Generator, previous: torch.Tensor | None) -> torch.Tensor:
    return z if previous is None else previous


def _rotate(z: torch.Tensor, _: torch.Generator, __: torch.Tensor | None) -> torch.Tensor:
    fixed = torch.Generator().manual_seed(12345)  # the same rotation every round
    rotation, _r = torch.linalg.qr(torch.randn(z.shape[-1], z.shape[-1], generator=fixed))
    return _unit(z @ rotation)


def _target(z: torch.Tensor, g: torch.Generator, _: torch.Tensor | None) -> torch.Tensor:
    direction = _unit(torch.randn(z.shape[-1], generator=torch.Generator().manual_seed(54321)))
    signs = torch.where(torch.arange(z.shape[0]) % 2 == 0, 1.0, -1.0)
    return signs[:, None] * direction[None, :]


Attack = Callable[[torch.Tensor, torch.Generator, torch.Tensor | None], torch.Tensor]
ATTACKS: dict[str, Attack] = {
    "random": _random,
    "constant": _constant,
    "shuffle": _shuffle,
    "replay": _replay,
    "rotate": _rotate,
    "target": _target,
}
