"""A user's :class:`Trainer`: supervised steps, contrastive steps, evaluation, representations.

Plain PyTorch, device-agnostic, no Flower. The ClientApp drives a :class:`Trainer` once
per round and saves its :meth:`Trainer.state_dict` between messages.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor

from fedmuscle_flwr.algorithms import get_algorithm
from fedmuscle_flwr.data.batches import CollatedSplit
from fedmuscle_flwr.data.users import UserData
from fedmuscle_flwr.loss import (
    class_probabilities,
    distillation_loss,
    image_presence,
    label_space_key,
    presence_distillation_loss,
    presence_loss,
    teacher_certainty,
)
from fedmuscle_flwr.models import ClientModel
from fedmuscle_flwr.payload import UserPayload
from fedmuscle_flwr.privacy import PrivateSteps, make_private_model, task_parameters
from fedmuscle_flwr.training.bootstrap import paired_bootstrap_share
from fedmuscle_flwr.training.gate import paired_round, validation_gate
from fedmuscle_flwr.training.helpers import check_finite, frozen_norm_statistics, is_head
from fedmuscle_flwr.training.settings import TrainSettings

__all__ = ["Trainer", "contrastive_objective"]

EVAL_BATCH = 256


def _unit_rows(z: Tensor) -> Tensor:
    """Z as the wire carries it: float32 rows of unit norm, on the CPU."""
    return torch.nn.functional.normalize(z.float(), dim=-1).cpu()


@torch.no_grad()
def _folded(
    average: dict[str, Tensor] | None, current: Mapping[str, Tensor], keep: float
) -> dict[str, Tensor]:
    """``average`` moved 1 - ``keep`` of the way to ``current`` by name (in place).

    With no average yet: a copy of ``current``. An exponential moving average over calls.
    """
    if average is None:
        return {name: tensor.detach().clone() for name, tensor in current.items()}
    for name, tensor in current.items():
        average[name].lerp_(tensor, 1 - keep)
    return average


@contextlib.contextmanager
def _holding(tensors: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> Iterator[None]:
    """Inside, each of ``tensors`` holds the entry of ``values`` of its name; then its own."""
    own = {name: tensor.detach().clone() for name, tensor in tensors.items()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            tensor.copy_(values[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.copy_(own[name])


def contrastive_objective(
    algorithm: str, payload: UserPayload, *, tau: float, tau_alpha: float
) -> Callable[[Tensor], Tensor]:
    """The contrastive loss of the registered ``algorithm`` against this round's payload."""
    return get_algorithm(algorithm).objective(payload, tau=tau, tau_alpha=tau_alpha)


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
        if settings.dp:  # BatchNorm mixes examples: GroupNorm instead (privacy module)
            model = cast(ClientModel, make_private_model(model))
        self.model = model.to(device)
        self.data = data
        self.settings = settings
        self.device = device
        self._splits: dict[int, CollatedSplit] = {}  # id(data set) -> its converted rows
        self.generator = torch.Generator().manual_seed(seed)
        supervised = model.trainable_parameters()
        if settings.dp:  # the DP optimiser holds what the task loss reaches, nothing else
            supervised = self._task_parameters()
        self.optimizer = torch.optim.AdamW(supervised, lr=settings.learning_rate)
        # A second AdamW for the contrastive objective (optimizer-state = "separate", and
        # always with DP, whose optimiser must not see public-data steps): its moments never
        # mix with the task's; lambda then scales its learning rate, since Adam's step is
        # invariant to the scale of the loss.
        self.contrastive_optimizer: torch.optim.Optimizer | None = None
        if settings.optimizer_state == "separate" or settings.dp:
            self.contrastive_optimizer = torch.optim.AdamW(
                [p for p in model.trainable_parameters() if not is_head(model, p)],
                lr=settings.learning_rate,
            )
        # The projection head's own AdamW for ``projection-steps`` (made at the first of them).
        self.projection_optimizer: torch.optim.Optimizer | None = None
        # target-decay > 0: the moving average over rounds of the projection's tensors, by
        # name, from which the rows the user sends are made (none before the first round)
        self.target_projection: dict[str, Tensor] | None = None
        self.private: PrivateSteps | None = None
        if settings.dp:
            self.private = PrivateSteps(
                self.model, supervised, self.optimizer,
                num_examples=len(data.train), batch_size=settings.batch_size,
                max_steps=settings.private_steps, settings=settings.privacy,
                generator=self.generator, noise_seed=seed + 2,
            )  # fmt: skip
        # The user's own state of torch's global generators (dropout, and any other op that
        # draws from them): a round's work runs under it (:meth:`random_state`), so it never
        # depends on which users a process served before.
        self.rng_seed = seed + 1
        self.rng_state: dict[str, Any] = {
            "cpu": torch.Generator().manual_seed(self.rng_seed).get_state(),
            "cuda": None,
        }
        self.rounds_done = 0
        self.gate_scale = 1.0  # the validation gate's multiplier of lambda
        self.lr_scale = 1.0  # this round's share of the learning rate (lr-schedule)
        # fallback = "local": the same user trained alone, step for step as its local
        # baseline would be; evaluate() reports whichever model is better on validation.
        self.fallback: Trainer | None = None
        # fallback-window: validation outputs (joined, alone) of the rounds that the next
        # decision pools besides its own (at most fallback-window - 1; none with a window of 1)
        self.fallback_outputs: list[tuple[Tensor, Tensor]] = []
        # weight-average = "ema": the moving average over rounds of the tensors training
        # changes (trainable parameters, float buffers), by name; what evaluate() scores
        self.averaged: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ round steps

    @contextlib.contextmanager
    def random_state(self) -> Iterator[None]:
        """Run the enclosed work on this user's own global RNG state, then keep its new state.

        The process's generators are restored afterwards, so two users served by one process
        (a simulation worker) never share a random stream.
        """
        cuda = self.device.type == "cuda"
        devices = [self.device.index or 0] if cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.rng_state["cpu"])
            if cuda:
                if self.rng_state["cuda"] is None:
                    torch.cuda.manual_seed(self.rng_seed)
                else:
                    torch.cuda.set_rng_state(self.rng_state["cuda"], self.device)
            try:
                yield
            finally:
                self.rng_state = self._global_rng_state()

    def _global_rng_state(self) -> dict[str, Any]:
        """The process's generator states that this user's work draws from."""
        cuda = self.device.type == "cuda"
        return {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
        }

    def train_round(
        self,
        indices: Sequence[int] | None,
        payload: UserPayload | None,
        *,
        weight: float | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """One round's contrastive update (given a payload) and supervised steps.

        They run in ``contrastive_order``; returns ``train-loss`` and the contrastive metrics.
        ``lr_scale`` is this round's share of the learning rate (``lr-schedule``), for every
        step of the round and the fallback's alike.

        With ``gate = "paired"`` (*beyond the paper*) the round is also run without its
        contrastive update, from the same state and on the same minibatches; the user keeps
        whichever of the two ends with the lower validation loss (within ``gate-tolerance``
        in favour of the contrastive one), so a contrastive update is judged after the task
        has had its steps on it, not before. With a :attr:`fallback` trainer, that one
        then takes the round's steps alone.
        """
        self._set_lr_scale(lr_scale)
        result = self._train_round(indices, payload, weight)
        self._update_average()
        self._update_target()
        if self.fallback is not None:  # the user alone: its own random state, no payload
            with self.fallback.random_state():
                self.fallback.train_round(None, None, lr_scale=lr_scale)
        return result

    def _set_lr_scale(self, scale: float) -> None:
        """Put this round's learning rate into the task optimiser.

        The contrastive optimiser's rate (``optimizer-state = "separate"``) is set per step,
        times lambda.
        """
        self.lr_scale = scale
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.learning_rate * scale

    def _train_round(
        self, indices: Sequence[int] | None, payload: UserPayload | None, weight: float | None
    ) -> dict[str, float]:
        paired = self.settings.gate == "paired" and self.data.validation is not None
        if self.private is not None:  # refuse before any step that would pass the budget
            both = paired and payload is not None and indices is not None
            self.private.check_budget(self.settings.local_steps * (2 if both else 1))
        if payload is None or indices is None:
            return {"train-loss": self.supervised_update()}
        if not paired:
            return self._round_steps(indices, payload, weight)
        return paired_round(self, indices, payload, weight)

    def _round_steps(
        self, indices: Sequence[int], payload: UserPayload, weight: float | None
    ) -> dict[str, float]:
        result: dict[str, float] = {}
        if self.settings.contrastive_order == "after":
            result["train-loss"] = self.supervised_update()
        result |= self.contrastive_update(indices, payload, weight=weight)
        if self.settings.contrastive_order == "before":
            result["train-loss"] = self.supervised_update()
        return result

    def supervised_update(self) -> float:
        """``local_steps`` optimiser steps on the task loss; returns the mean loss."""
        if self.private is not None:
            return self._private_update(self.private)
        self.model.train()
        losses = []
        for indices in self._minibatches(self.settings.local_steps):
            batch = self._batch(self.data.train, indices)
            with self._autocast():
                loss = self.model.task_loss(batch)
            self._step(loss)
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses)

    def _private_update(self, private: PrivateSteps) -> float:
        """``local_steps`` DP-SGD steps on Poisson-sampled minibatches; the mean loss."""
        self.model.train()
        losses = []
        for indices in private.minibatches(self.settings.local_steps):
            if not indices:  # an empty sample: no update, the step still counts
                private.skip()
                continue
            loss = self.model.task_loss(self._batch(self.data.train, indices))
            check_finite(loss)
            private.step(loss)
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses) if losses else float("nan")

    def privacy_spent(self) -> dict[str, float]:
        """``dp-epsilon`` and ``dp-delta`` spent so far (empty without DP)."""
        if self.private is None:
            return {}
        return {"dp-epsilon": self.private.epsilon(), "dp-delta": self.settings.privacy.delta}

    def contrastive_update(
        self, indices: Sequence[int], payload: UserPayload, *, weight: float | None = None
    ) -> dict[str, float]:
        """``contrastive_steps`` steps on lambda * L(z) on the round's public batch.

        ``weight`` is this round's lambda (warm-up and ramp applied; default: the settings'
        ``contrastive_weight``). With ``distill-weight`` > 0 and a teacher in the payload
        (*beyond the paper*), each step also minimises ``distill-weight`` times the
        distillation loss of the user's logits on the batch against its label-space peers'
        consensus (each row weighted by the teacher's certainty with ``distill-row-weight =
        "certainty"``); the gate's scale applies to both terms (to lambda alone with
        ``gate-scales-distill = false``; a rejected update is rolled back either way).
        With ``gate = "validation"`` the steps are kept only if the validation loss did not
        rise by more than ``gate_tolerance`` (relative); otherwise model and optimiser are
        rolled back and the gate halves this user's lambda, which doubles back (up to 1x)
        after each kept update. Returns ``contrastive-loss``, ``lambda`` (the effective
        weight used), ``contrastive-loss-start`` (L(z) without lambda before the round's
        steps, with a contrastive term), ``distill-loss`` with a teacher and, when gated,
        ``gate-kept`` (1 or 0) and the validation losses before and after.
        """
        base = self.settings.contrastive_weight if weight is None else weight
        effective = base * self.gate_scale
        teacher = self._teacher(payload)
        presence = payload.teacher_kind == "presence"
        distill_scale = self.gate_scale if self.settings.gate_scales_distill else 1.0
        distill = self.settings.distill_weight * distill_scale if teacher is not None else 0.0
        if effective == 0 and distill == 0:
            return {"lambda": 0.0}
        objective = contrastive_objective(
            self.settings.algorithm,
            payload,
            tau=self.settings.tau,
            tau_alpha=self.settings.tau_alpha,
        )
        batch = self._batch(self.data.public, indices)

        def steps() -> dict[str, float]:
            losses = self._contrastive_steps(
                objective, batch, effective, teacher, distill, presence=presence
            )
            result = {"contrastive-loss": losses[0], "lambda": effective}
            if losses[2] is not None:
                result["contrastive-loss-start"] = losses[2]
            if teacher is not None:
                result["distill-loss"] = losses[1]
            return result

        if self.settings.gate == "validation" and self.data.validation is not None:
            return validation_gate(self, steps)
        return steps()

    @property
    def label_space(self) -> str:
        """The key of the classes this user predicts, when it distils ("" otherwise).

        A user distils with ``distill-weight`` > 0, a single-label task with named classes,
        and the task's optimiser on its collaborative steps: not with DP or
        ``optimizer-state = "separate"``, whose contrastive optimiser leaves the head out.
        """
        if not self._can_distil or not self.model.task_type.single_label:
            return ""
        names = self.data.label_space
        return label_space_key(names) if names else ""

    @property
    def teacher_space(self) -> str:
        """The key of the label space this user takes a teacher in ("" when it takes none).

        A distilling single-label user's :attr:`label_space`; with ``distill-presence``, a
        multi-label user's output names (it learns presence from single-label peers of
        those classes and sends no predictions).
        """
        if self.label_space:
            return self.label_space
        if not (self._can_distil and self.settings.distill_presence):
            return ""
        names = self.data.output_space if self.model.task_type.multi_label else ()
        return label_space_key(names) if len(names) >= 2 else ""

    @property
    def presence_space(self) -> str:
        """The key of the classes this user sends image-level presence of ("" when none).

        With ``distill-presence`` and ``presence-teacher = "segmentation"``, a distilling
        dense user whose outputs are named: class 0 is background, the others are the
        classes whose presence it sends (:func:`~fedmuscle_flwr.loss.image_presence`).
        """
        if not (
            self._can_distil
            and self.settings.distill_presence
            and self.settings.presence_teacher == "segmentation"
            and self.model.task_type.head == "dense"
        ):
            return ""
        names = self.data.output_space[1:]
        return label_space_key(names) if len(names) >= 2 else ""

    @property
    def _can_distil(self) -> bool:
        """``distill-weight`` > 0 and the task's optimiser (head included) on the public batch."""
        return self.settings.distill_weight > 0 and self.contrastive_optimizer is None

    def _teacher(self, payload: UserPayload) -> Tensor | None:
        """The payload's teacher, checked against this user's classes (None: no distillation)."""
        if payload.teacher is None or not self.teacher_space:
            return None
        if payload.teacher.shape[-1] != self.model.num_classes:
            raise ValueError(
                f"the teacher predicts {payload.teacher.shape[-1]} classes, this user "
                f"{self.model.num_classes}: the server paired users of different label spaces"
            )
        return payload.teacher.to(self.device)

    def _contrastive_steps(
        self,
        objective: Callable[[Tensor], Tensor],
        batch: dict[str, Any],
        weight: float,
        teacher: Tensor | None = None,
        distill_weight: float = 0.0,
        *,
        presence: bool = False,
    ) -> tuple[float, float, float | None]:
        """The steps on the public batch: mean contrastive and distillation losses, start loss.

        The start loss is L(z) without lambda on the round's batch before any of the
        round's steps (the first projection step's, else the first contrastive step's; None
        without a contrastive term): how well the user's z matched its partners' when the
        round began, what alignment carried over from earlier rounds.
        ``presence``: the teacher is a presence estimate (a segmentation peer's), not classes.
        """
        align = self.settings.projection_steps > 0 and weight > 0
        optimizer: torch.optim.Optimizer = self.optimizer
        if self.contrastive_optimizer is not None:
            optimizer = self.contrastive_optimizer
            for group in optimizer.param_groups:
                group["lr"] = self.settings.learning_rate * weight * self.lr_scale
            weight = 1.0
        self.model.train()
        losses, distilled = [], []
        row_weights = None
        if teacher is not None and not presence and self.settings.distill_row_weight == "certainty":
            row_weights = teacher_certainty(teacher.float())
        if presence:  # a segmentation peer's presence estimate
            teacher_loss = partial(presence_distillation_loss, row_weights=row_weights)
        else:  # class probabilities: a label-space peer's, or a bound on presence
            teacher_loss = partial(
                distillation_loss if self.label_space else presence_loss,
                temperature=self.settings.distill_temperature,
                row_weights=row_weights,
            )
        hooks = (
            contextlib.nullcontext()
            if self.private is None
            else self.private.no_per_example_gradients()
        )
        start: float | None = None
        with self._public_norm(), hooks:
            if align:
                start = self._align_projection(objective, batch)
            for _ in range(self.settings.contrastive_steps):
                with self._autocast():
                    if teacher is None:
                        z = self.model.encode_public(batch).float()
                    else:
                        z, logits = self.model.encode_public_with_logits(batch)
                        z = z.float()
                if self.settings.amp:  # bfloat16 rows are unit only to about 4e-3
                    z = torch.nn.functional.normalize(z, dim=-1)
                if weight:
                    raw = objective(z)
                    if start is None:
                        start = float(raw.detach())
                    contrastive = weight * raw
                else:
                    contrastive = z.sum() * 0.0
                loss = contrastive
                if teacher is not None:
                    kd = teacher_loss(logits, teacher)
                    loss = loss + distill_weight * kd
                    distilled.append(float(kd.detach()))
                self._step(loss, optimizer)
                losses.append(float(contrastive.detach()))
        mean_kd = sum(distilled) / len(distilled) if distilled else 0.0
        return sum(losses) / len(losses), mean_kd, start

    def _align_projection(
        self, objective: Callable[[Tensor], Tensor], batch: dict[str, Any]
    ) -> float:
        """``projection-steps`` steps on the projection head alone (*beyond the paper*).

        The encoder's pooled features of the public batch are computed once, without
        gradient and leaving norm statistics as they were; each step then moves the
        projection (its own AdamW, at the task's learning rate) towards the partners' space
        under the algorithm's loss. The task never sees the projection, so these steps leave
        the user's predictions as they are; they give the contrastive steps that follow a z
        that already matches the partners', so that the pull on the encoder through it
        carries what the partners see. Returns the loss before the first step.
        """
        statistics = {name: b.clone() for name, b in self.model.named_buffers()}
        with torch.no_grad(), self._autocast():
            features = self.model.encoder.pooled(batch).float()
        with torch.no_grad():  # a read of the batch, not a step: norm statistics as they were
            for name, buffer in self.model.named_buffers():
                buffer.copy_(statistics[name])
        optimizer = self._projection_optimizer()
        for group in optimizer.param_groups:
            group["lr"] = self.settings.learning_rate * self.lr_scale
        start = 0.0
        for step in range(self.settings.projection_steps):
            z = torch.nn.functional.normalize(self.model.projection(features).float(), dim=-1)
            loss = objective(z)
            if step == 0:
                start = float(loss.detach())
            self._step(loss, optimizer)
        return start

    def _projection_optimizer(self) -> torch.optim.Optimizer:
        """The projection head's AdamW for ``projection-steps``, made the first time."""
        if self.projection_optimizer is None:
            self.projection_optimizer = torch.optim.AdamW(
                self.model.projection.parameters(), lr=self.settings.learning_rate
            )
        return self.projection_optimizer

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean task loss on the validation split (eval mode)."""
        if self.data.validation is None:
            raise ValueError("no validation split: set validation-fraction > 0")
        self.model.eval()
        total, count = 0.0, 0
        split = self.data.validation
        for start in range(0, len(split), EVAL_BATCH):
            rows = range(start, min(start + EVAL_BATCH, len(split)))
            batch = self._batch(split, rows)
            with self._autocast():
                total += float(self.model.task_loss(batch).float()) * len(rows)
            count += len(rows)
        return total / count

    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the held-out split, of the model the user keeps.

        With a :attr:`fallback` (``fallback = "local"``, *beyond the paper*): of whichever of
        the joined model and the model trained alone is better on the validation split
        (``fallback-criterion``: the lower loss; the higher primary metric with the loss
        breaking ties; or ``bootstrap``, a higher primary metric on at least
        ``fallback-confidence`` of the paired resamples of the validation split, pooled over
        the last ``fallback-window`` rounds, recorded as ``fallback-joined-share``, and at
        least ``fallback-last-share`` of this round's alone, recorded as
        ``fallback-last-share`` with a window), with
        ``fallback-local`` 1 when it is the one trained alone (the joined model still trains
        on and represents the user to its partners). ``joined-<primary metric>`` is the
        joined model's, whichever is kept: what collaboration did to the model, beside what
        the user reports.

        With ``weight-average = "ema"`` each model is scored, and the two compared, with its
        weights averaged over the rounds (:meth:`averaged_weights`).
        """
        with self.averaged_weights():
            if self.fallback is None:
                return self._metrics()
            with self.fallback.averaged_weights():
                decision = self._fallback_decision(self.fallback)
                joined = self._metrics()
                metrics = self.fallback._metrics() if decision["fallback-local"] else joined
        primary = self.model.task_type.primary_metric
        return metrics | decision | {f"joined-{primary}": joined[primary]}

    # ------------------------------------------------------------------ weight average

    def _averaged_tensors(self) -> dict[str, Tensor]:
        """The tensors an average follows: trainable parameters and floating-point buffers."""
        tensors = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        return tensors | {n: b for n, b in self.model.named_buffers() if b.is_floating_point()}

    def _update_average(self) -> None:
        """``weight-average = "ema"``: fold this round's weights into the average."""
        if self.settings.weight_average == "ema":
            self.averaged = _folded(
                self.averaged, self._averaged_tensors(), self.settings.weight_average_decay
            )

    def _update_target(self) -> None:
        """``target-decay`` > 0: fold this round's projection into the sent rows' average.

        Only for an algorithm whose users exchange rows: the model trained alone (``local``,
        the fallback) sends none, so it keeps no average.
        """
        if self.settings.target_decay > 0 and get_algorithm(self.settings.algorithm).collaborative:
            self.target_projection = _folded(
                self.target_projection,
                self.model.projection.state_dict(),
                self.settings.target_decay,
            )

    @contextlib.contextmanager
    def _sending_projection(self) -> Iterator[None]:
        """Inside, the projection holds the sent rows' average (``target-decay``); then its own.

        The partners align to rows that move slowly from round to round, as momentum
        encoders keep their targets; the user's own z in its steps is its projection's.
        """
        if self.target_projection is None:
            yield
            return
        with _holding(self.model.projection.state_dict(), self.target_projection):
            yield

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside, the model holds its averaged weights (none yet: its own); then its own again.

        Training never sees the average: the gate, the contrastive steps and Z use the
        weights training left.
        """
        if self.averaged is None:
            yield
            return
        with _holding(self._averaged_tensors(), self.averaged):
            yield

    def _fallback_decision(self, fallback: Trainer) -> dict[str, float]:
        if self.settings.fallback_criterion == "bootstrap":
            pooled, last = self._joined_shares(fallback)
            keep = pooled >= self.settings.fallback_confidence  # a lead held over the window
            keep = keep and last >= self.settings.fallback_last_share  # ... not lost in this round
            decision = {"fallback-local": float(not keep), "fallback-joined-share": pooled}
            if self.settings.fallback_window > 1:
                decision["fallback-last-share"] = last
            return decision
        return {"fallback-local": float(self._fallback_is_better(fallback))}

    def _joined_shares(self, fallback: Trainer) -> tuple[float, float]:
        """Shares of paired validation resamples on which this model beats ``fallback``.

        The first is pooled over this round and the ones before it, up to
        ``fallback-window`` rounds (:attr:`fallback_outputs` keeps those the next decision
        needs, and only those: a segmentation user's outputs are its validation logits,
        megabytes in its state); the second is this round's alone (the same number while
        the window holds one round).
        """
        joined, target = self.validation_outputs()
        alone, target_alone = fallback.validation_outputs()
        if not torch.equal(target, target_alone):
            raise RuntimeError("the joined and the lone model hold different validation splits")
        window = self.settings.fallback_window
        pooled = [*self.fallback_outputs, (joined, alone)][-window:]
        self.fallback_outputs = pooled[1:] if len(pooled) == window else pooled
        rounds = len(pooled)
        task, num_classes = self.model.task_type, self.model.num_classes
        share = paired_bootstrap_share(
            task,
            num_classes,
            torch.cat([pair[0] for pair in pooled]),
            torch.cat([pair[1] for pair in pooled]),
            target.repeat(rounds, *([1] * (target.dim() - 1))),
            rounds=rounds,
        )
        if rounds == 1:
            return share, share
        return share, paired_bootstrap_share(task, num_classes, joined, alone, target)

    @torch.no_grad()
    def validation_outputs(self) -> tuple[Tensor, Tensor]:
        """``(preds, target)`` of every validation example as the task's metrics take them."""
        if self.data.validation is None:
            raise ValueError("no validation split: set validation-fraction > 0")
        self.model.eval()
        split, preds, targets = self.data.validation, [], []
        for start in range(0, len(split), EVAL_BATCH):
            batch = self._batch(split, range(start, min(start + EVAL_BATCH, len(split))))
            with self._autocast():
                logits = self.model.forward_task(batch)
            pred, target = self.model.task_type.metric_inputs(logits.float(), batch)
            preds.append(pred.cpu())
            targets.append(target.cpu())
        return torch.cat(preds), torch.cat(targets)

    def validation_metric(self) -> float:
        """The task's primary metric on the validation split."""
        if self.data.validation is None:
            raise ValueError("no validation split: set validation-fraction > 0")
        return self._metrics(self.data.validation)[self.model.task_type.primary_metric]

    def _fallback_is_better(self, fallback: Trainer) -> bool:
        if self.settings.fallback_criterion == "metric":
            metric_alone = fallback.validation_metric()
            metric_joined = self.validation_metric()
            if metric_alone != metric_joined:
                return metric_alone > metric_joined
        return fallback.validation_loss() < self.validation_loss()

    @torch.no_grad()
    def _metrics(self, split: Any = None) -> dict[str, float]:
        """The task's metrics on ``split`` (default: the held-out test split)."""
        split = self.data.test if split is None else split
        self.model.eval()
        metrics = self.model.task_type.metrics(self.model.num_classes).to(self.device)
        for start in range(0, len(split), EVAL_BATCH):
            batch = self._batch(split, range(start, min(start + EVAL_BATCH, len(split))))
            with self._autocast():
                logits = self.model.forward_task(batch)
            metrics.update(logits.float(), batch)
        return metrics.compute()

    @torch.no_grad()
    def represent(self, indices: Sequence[int]) -> Tensor:
        """Z_n on the public batch: (B, d) unit-norm rows, float32 on the CPU.

        With ``target-decay`` > 0 (*beyond the paper*) the rows come from the moving
        average of the projection over rounds (:meth:`_sending_projection`).
        """
        self.model.eval()
        with self._autocast(), self._sending_projection():
            z = self.model.encode_public(self._batch(self.data.public, indices))
        return _unit_rows(z)

    @torch.no_grad()
    def represent_and_predict(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """Z_n and, when this user distils (:attr:`label_space`), its class probabilities.

        The probabilities (B, K) are at ``distill-temperature``, float32 on the CPU; a user
        with a :attr:`presence_space` sends its image-level presence (B, K) instead; None
        for a user that sends neither.
        """
        if self.presence_space:  # dense logits come from the spatial path: a second pass
            self.model.eval()
            batch = self._batch(self.data.public, indices)
            with self._autocast(), self._sending_projection():
                z = self.model.encode_public(batch)
                presence = image_presence(self.model.forward_task(batch))
            return _unit_rows(z), presence.cpu()
        if not self.label_space:
            return self.represent(indices), None
        self.model.eval()
        with self._autocast(), self._sending_projection():
            z, logits = self.model.encode_public_with_logits(self._batch(self.data.public, indices))
        probabilities = class_probabilities(logits, temperature=self.settings.distill_temperature)
        return _unit_rows(z), probabilities.cpu()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimiser, random state, rounds."""
        projection = self.projection_optimizer
        return self._weights_state() | {
            "generator": self.generator.get_state(),
            "rng_state": dict(self.rng_state),
            "rounds_done": self.rounds_done,
            "gate_scale": self.gate_scale,
            "privacy": None if self.private is None else self.private.state_dict(),
            "fallback": None if self.fallback is None else self.fallback.state_dict(),
            "fallback_outputs": list(self.fallback_outputs),
            "averaged": None if self.averaged is None else dict(self.averaged),
            "projection_optimizer": None if projection is None else projection.state_dict(),
            "target_projection": self.target_projection,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.model.load_checkpoint_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.contrastive_optimizer is not None and state.get("contrastive_optimizer"):
            self.contrastive_optimizer.load_state_dict(state["contrastive_optimizer"])
        self.generator.set_state(state["generator"])
        if "rng_state" in state:
            self.rng_state = dict(state["rng_state"])
        self.rounds_done = int(state["rounds_done"])
        self.gate_scale = float(state.get("gate_scale", 1.0))
        if self.private is not None and state.get("privacy"):
            self.private.load_state_dict(state["privacy"])
        if self.fallback is not None:
            if not state.get("fallback"):
                raise ValueError("the saved state has no fallback model (saved with fallback off)")
            self.fallback.load_state_dict(state["fallback"])
        self.fallback_outputs = [tuple(pair) for pair in state.get("fallback_outputs", [])]
        if state.get("projection_optimizer"):
            self._projection_optimizer().load_state_dict(state["projection_optimizer"])
        self.target_projection = self._on_device(state.get("target_projection"))
        self.averaged = self._on_device(state.get("averaged"))

    def _on_device(self, tensors: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
        """A saved average (by name) on this trainer's device; None stays None."""
        return None if tensors is None else {n: t.to(self.device) for n, t in tensors.items()}

    # ------------------------------------------------------------------ helpers

    def _minibatches(self, steps: int) -> Iterator[list[int]]:
        size = min(self.settings.batch_size, len(self.data.train))
        for _ in range(steps):
            yield torch.randperm(len(self.data.train), generator=self.generator)[:size].tolist()

    def _batch(self, dataset: Any, indices: Sequence[int] | range) -> dict[str, Any]:
        split = self._splits.get(id(dataset))
        if split is None or split.dataset is not dataset:
            split = self._splits[id(dataset)] = CollatedSplit(
                dataset, image_size=self.data.image_size
            )
        batch = split.take(indices)
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _task_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters the task loss reaches (probed on one training batch)."""
        rows = range(min(self.settings.batch_size, len(self.data.train)))
        batch = self._batch(self.data.train, rows)
        with torch.random.fork_rng(devices=[]):
            self.model.train()
            return task_parameters(self.model, lambda: self.model.task_loss(batch))

    def _step(self, loss: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        check_finite(loss)
        optimizer = optimizer or self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def _snapshot(self, *, full: bool = False) -> dict[str, Any]:
        """Model and optimiser state to roll an update back to.

        ``full`` adds the batch order, the random state and the gate's scale, to replay a
        round exactly.
        """
        state = self._weights_state()  # not the fallback's: a rollback never touches it
        if full:
            state |= {
                "generator": self.generator.get_state(),
                "rng_state": self._global_rng_state(),
                "gate_scale": self.gate_scale,
            }
        return copy.deepcopy(state)

    def _weights_state(self) -> dict[str, Any]:
        """Model and optimiser states (the part of :meth:`state_dict` a rollback restores)."""
        second = self.contrastive_optimizer
        return {
            "model": self.model.state_for_checkpoint(),
            "optimizer": self.optimizer.state_dict(),
            "contrastive_optimizer": None if second is None else second.state_dict(),
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        """Roll model and optimisers back to ``snapshot``.

        With ``projection-steps``, the projection head stays as it is: the task never sees
        it, so rolling back an update that did not help the task need not undo its
        alignment with the partners.
        """
        projection = None
        if self.settings.projection_steps:
            projection = copy.deepcopy(self.model.projection.state_dict())
        self.model.load_checkpoint_state(snapshot["model"])
        if projection is not None:
            self.model.projection.load_state_dict(projection)
        self.optimizer.load_state_dict(snapshot["optimizer"])
        if self.contrastive_optimizer is not None:
            self.contrastive_optimizer.load_state_dict(snapshot["contrastive_optimizer"])
        if "generator" in snapshot:
            self.generator.set_state(snapshot["generator"])
            torch.set_rng_state(snapshot["rng_state"]["cpu"])
            if snapshot["rng_state"]["cuda"] is not None:
                torch.cuda.set_rng_state(snapshot["rng_state"]["cuda"], self.device)
            self.gate_scale = snapshot["gate_scale"]

    def _public_norm(self) -> contextlib.AbstractContextManager[Any]:
        """``public-norm = "frozen"``: norm layers use (and keep) their running statistics."""
        if self.settings.public_norm == "train":
            return contextlib.nullcontext()
        return frozen_norm_statistics(self.model)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.settings.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
