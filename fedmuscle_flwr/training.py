"""One user's local work: supervised steps, contrastive steps, evaluation, representations.

Plain PyTorch, device-agnostic, no Flower. The ClientApp drives a :class:`Trainer` once
per round and saves its :meth:`Trainer.state_dict` between messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedmuscle_flwr.aggregation import UserPayload
from fedmuscle_flwr.config import ALGORITHMS, RunConfig
from fedmuscle_flwr.data.batches import to_batch
from fedmuscle_flwr.data.users import UserData
from fedmuscle_flwr.federation import UserProfile
from fedmuscle_flwr.loss import MuscleObjective, dense_muscle_loss, ensemble_loss, pairwise_loss
from fedmuscle_flwr.models import ClientModel

__all__ = ["TrainSettings", "Trainer", "contrastive_objective", "resolve_device"]

EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one user's local work (run config, with per-user overrides)."""

    algorithm: str = "muscle"
    tau: float = 0.1
    tau_alpha: float = 0.1
    contrastive_weight: float = 1.0
    contrastive_steps: int = 1
    local_steps: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    amp: bool = False

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, got {self.algorithm!r}")

    @classmethod
    def for_user(cls, config: RunConfig, profile: UserProfile) -> TrainSettings:
        """The run's settings with the profile's overrides (learning rate, local steps)."""
        return cls(
            algorithm=config.algorithm,
            tau=config.tau,
            tau_alpha=config.tau_alpha,
            contrastive_weight=config.contrastive_weight,
            contrastive_steps=config.contrastive_steps,
            local_steps=profile.local_steps or config.local_steps,
            batch_size=config.batch_size,
            learning_rate=profile.learning_rate or config.learning_rate,
            amp=config.amp,
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use device='auto'"
        )
    return device


def contrastive_objective(
    algorithm: str, payload: UserPayload, *, tau: float, tau_alpha: float
) -> Callable[[Tensor], Tensor]:
    """The contrastive loss of ``algorithm`` against this round's payload, as z -> loss."""
    others = payload.others
    if algorithm == "muscle":
        if payload.aggregated is not None and payload.log_alpha is not None:
            aggregated, log_alpha = payload.aggregated, payload.log_alpha
            return lambda z: dense_muscle_loss(
                z, aggregated.to(z.device), log_alpha.to(z.device), tau=tau
            )
        objective = MuscleObjective(others, payload.log_alpha_pairs, tau=tau, tau_alpha=tau_alpha)
        return lambda z: objective(z)
    if algorithm == "pairwise":
        return lambda z: pairwise_loss(z, others.to(z.device), tau=tau)
    if algorithm == "ensemble":
        return lambda z: ensemble_loss(z, others.to(z.device), tau=tau)
    raise ValueError(f"algorithm {algorithm!r} has no contrastive loss")


class Trainer:
    """A user's model, optimiser and data, and the four things a round asks of them.

    Parameters
    ----------
    model
        The user's client model.
    data
        Its private train/test split and the public set.
    settings
        Hyper-parameters.
    device
        Where to train.
    seed
        Seed of the mini-batch order.
    """

    def __init__(
        self,
        model: ClientModel,
        data: UserData,
        settings: TrainSettings,
        *,
        device: torch.device,
        seed: int,
    ) -> None:
        self.model = model.to(device)
        self.data = data
        self.settings = settings
        self.device = device
        self.optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=settings.learning_rate)
        self.generator = torch.Generator().manual_seed(seed)
        self.rounds_done = 0

    # ------------------------------------------------------------------ round steps

    def supervised_update(self) -> float:
        """``local_steps`` optimiser steps on the task loss; returns the mean loss."""
        self.model.train()
        losses = []
        for indices in self._minibatches(self.settings.local_steps):
            batch = self._batch(self.data.train, indices)
            with self._autocast():
                loss = self.model.task_loss(batch)
            self._step(loss)
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses)

    def contrastive_update(self, indices: Sequence[int], payload: UserPayload) -> float:
        """``contrastive_steps`` steps on lambda * L(z) on the round's public batch."""
        if self.settings.contrastive_weight == 0:
            return 0.0
        objective = contrastive_objective(
            self.settings.algorithm,
            payload,
            tau=self.settings.tau,
            tau_alpha=self.settings.tau_alpha,
        )
        batch = self._batch(self.data.public, indices)
        self.model.train()
        losses = []
        for _ in range(self.settings.contrastive_steps):
            with self._autocast():
                z = self.model.encode_public(batch)
            loss = self.settings.contrastive_weight * objective(z.float())
            self._step(loss)
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the held-out split."""
        self.model.eval()
        metrics = self.model.task_type.metrics(self.model.num_classes).to(self.device)
        for start in range(0, len(self.data.test), EVAL_BATCH):
            batch = self._batch(
                self.data.test, range(start, min(start + EVAL_BATCH, len(self.data.test)))
            )
            with self._autocast():
                logits = self.model.forward_task(batch)
            metrics.update(logits.float(), batch)
        return metrics.compute()

    @torch.no_grad()
    def represent(self, indices: Sequence[int]) -> Tensor:
        """Z_n on the public batch: (B, d) unit-norm rows, float32 on the CPU."""
        self.model.eval()
        with self._autocast():
            z = self.model.encode_public(self._batch(self.data.public, indices))
        return torch.nn.functional.normalize(z.float(), dim=-1).cpu()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimiser, batch order, rounds."""
        return {
            "model": self.model.state_for_checkpoint(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rounds_done": self.rounds_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.model.load_checkpoint_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.rounds_done = int(state["rounds_done"])

    # ------------------------------------------------------------------ helpers

    def _minibatches(self, steps: int) -> Iterator[list[int]]:
        size = min(self.settings.batch_size, len(self.data.train))
        for _ in range(steps):
            yield torch.randperm(len(self.data.train), generator=self.generator)[:size].tolist()

    def _batch(self, dataset: Any, indices: Sequence[int] | range) -> dict[str, Any]:
        batch = to_batch(dataset[list(indices)], image_size=self.data.image_size)
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _step(self, loss: Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {float(loss)}: lower the learning rate or tau"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.settings.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
