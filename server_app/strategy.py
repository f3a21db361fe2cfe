"""The FedMuscle Strategy: one message exchange per round, per-user payloads, bounded waits.

Round t (built on Flower's ``Strategy.start`` loop through its hooks):

``configure_train``: pick the users; each gets the payload computed from the Z's that
arrived in round t - 1 (for the public batch b_t), the indices of b_t, and the indices of
b_{t+1} to represent next. ``aggregate_train``: validate every reply (error replies, wrong
or stale Z, missing users are left out with a log line), record metrics and bytes, compute
round t + 1's payloads from one Gram on the server's accelerator. Evaluation travels with
the train reply (the evaluate phase sends nothing).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmuscle_flwr import wire
from fedmuscle_flwr.aggregation import best_device, build_payloads
from fedmuscle_flwr.algorithms import get_algorithm
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.loss import teacher_by_confidence, teacher_mean
from fedmuscle_flwr.partner_gain import gain_scores
from fedmuscle_flwr.payload import UserPayload
from fedmuscle_flwr.results import RoundRecord, RunResults, UserInfo
from fedmuscle_flwr.screening import screen
from server_app.checkpoint import (
    Checkpoint,
    fingerprint,
    payloads_by_node,
    payloads_by_user,
    save_checkpoint,
)
from server_app.logs import server_logger
from server_app.rounds import NextRound, RoundInFlight

__all__ = ["FedMuscleStrategy"]

logger = server_logger()
NODE_POLL_SECONDS = 1.0  # between two looks for nodes while fewer than min-nodes are connected


class RunFailed(RuntimeError):
    """The run cannot go on: every user of a round failed with an error."""


class FedMuscleStrategy(Strategy):
    """FedMuscle on Flower's Strategy API.

    Parameters
    ----------
    config
        The validated run configuration.
    device
        Where the Gram matrix and payloads are computed (default: CUDA when available).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        device: torch.device | str | None = None,
        checkpoint_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.algorithm = get_algorithm(config.algorithm)
        self.device = torch.device(device) if device is not None else best_device()
        self._batch_rng = torch.Generator().manual_seed(config.seed)
        self._partner_rng = torch.Generator().manual_seed(config.seed + 1)
        self._sample_rng = torch.Generator().manual_seed(config.seed + 2)
        self._next: NextRound | None = None  # prepared by the previous round
        self._node_user: dict[int, str] = {}
        self._round: RoundInFlight | None = None
        self.results = RunResults(config=config.to_dict())
        self.experiment = uuid.uuid4().hex[:16]  # keys users' saved state; resumed runs keep it
        self.checkpoint_dir = checkpoint_dir  # results.json + checkpoint.pt after each round
        self.rounds_before = 0  # rounds a resumed run had finished before this process
        self._resumed: Checkpoint | None = None  # payloads in flight, until nodes are known
        self._absent_names: dict[int, str] = {}  # resumed partners with no node, by placeholder

    # ------------------------------------------------------------------ checkpoint

    def checkpoint(self) -> Checkpoint:
        """The run's state after the last finished round (see :mod:`server_app.checkpoint`)."""
        checkpoint = Checkpoint(
            round=len(self.results.rounds),
            experiment=self.experiment,
            fingerprint=self._fingerprint,
            generators={
                "batch": self._batch_rng.get_state(),
                "partner": self._partner_rng.get_state(),
                "sample": self._sample_rng.get_state(),
            },
            results=self.results.to_dict(),
        )
        if self._next is not None:
            checkpoint.next_round = self._next.round_id
            checkpoint.next_indices = self._next.indices
            checkpoint.next_payloads = payloads_by_user(self._next.payloads, self._user_name)
        return checkpoint

    @cached_property
    def _fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.config)

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue after ``checkpoint.round``: generators, results, experiment, payloads."""
        self.experiment = checkpoint.experiment
        self.rounds_before = checkpoint.round
        self._batch_rng.set_state(checkpoint.generators["batch"])
        self._partner_rng.set_state(checkpoint.generators["partner"])
        self._sample_rng.set_state(checkpoint.generators["sample"])
        self.results = RunResults.from_dict(checkpoint.results)
        self.results.config = self.config.to_dict()
        self._resumed = checkpoint if checkpoint.next_round is not None else None

    def _identify(self, grid: Grid, nodes: list[int], server_round: int) -> None:
        """Ask each node which user it serves (a resumed run's nodes may have new ids)."""
        messages = [
            Message(
                RecordDict(),
                dst_node_id=node,
                message_type=MessageType.QUERY,
                group_id=str(server_round),
            )
            for node in nodes
        ]
        for reply in grid.send_and_receive(messages, timeout=self.config.round_timeout):
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            try:
                self._register(node, wire.reply_user(reply.content, node))
            except wire.WireError as err:
                logger.warning("a node answered who it is with a bad record: %s", err)

    def _restore_payloads(self, grid: Grid, nodes: list[int]) -> NextRound:
        """The resumed round's payloads, addressed to the nodes that now serve their users."""
        checkpoint = self._resumed
        assert checkpoint is not None and checkpoint.next_round is not None
        self._identify(grid, nodes, checkpoint.next_round)
        node_of = {user: node for node, user in self._node_user.items() if node in nodes}
        unknown = sorted(set(checkpoint.next_payloads) - set(node_of))
        if unknown:
            logger.warning(
                "round %d: no node said it serves %s: their payloads are dropped",
                checkpoint.next_round, unknown,
            )  # fmt: skip
        payloads, self._absent_names = payloads_by_node(checkpoint.next_payloads, node_of)
        self._resumed = None
        return NextRound(checkpoint.next_round, tuple(checkpoint.next_indices), payloads)

    def summary(self) -> None:
        """Log the configuration the strategy runs with."""
        c = self.config
        logger.info(
            "FedMuscle: algorithm=%s M=%d B=%d tau=%g tau_alpha=%g lambda=%g payload=%s "
            "rounds=%d server device=%s",
            c.algorithm, c.num_partners, c.public_batch_size, c.tau, c.tau_alpha,
            c.contrastive_weight, c.payload, c.num_server_rounds, self.device,
        )  # fmt: skip

    # ------------------------------------------------------------------ train

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Build every selected user's instruction for this round."""
        server_round += self.rounds_before  # Flower counts the rounds of this process only
        state = RoundInFlight(started=time.perf_counter())
        selected = self._select_nodes(grid)
        if self._resumed is not None:
            self._next = self._restore_payloads(grid, selected)
        last = server_round >= self.config.num_server_rounds
        current = self._next if self._next and self._next.round_id == server_round else None
        # Z is asked for only where the next round collaborates (none during warm-up).
        if not last and self.config.exchange_at(server_round + 1):
            state.next = NextRound(server_round + 1, self._draw_public_batch())
        for node in selected:
            payload = current.payloads.get(node) if current is not None else None
            records = None
            if payload is not None:
                state.partners[node] = payload.partner_ids
                records = wire.payload_to_records(
                    payload,
                    round_id=server_round,
                    with_log_alpha=self.algorithm.needs_log_alpha,
                )
            content = wire.instruction_to_records(
                round_id=server_round,
                contrast_indices=current.indices if current and payload is not None else None,
                next_indices=state.next.indices if state.next is not None else None,
                payload=records,
                experiment=self.experiment,
            )
            state.downlink[node] = wire.record_nbytes(content)
            state.messages[node] = Message(
                content,
                dst_node_id=node,
                message_type=MessageType.TRAIN,
                group_id=str(server_round),
            )
        self._next = None
        self._round = state
        return list(state.messages.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, record the round, and compute the next round's payloads."""
        server_round += self.rounds_before
        state = self._round
        if state is None:
            raise RuntimeError("aggregate_train called before configure_train")
        record = RoundRecord(round=server_round)
        representations = self._collect(server_round, replies, state, record)
        for node, partners in state.partners.items():
            record.partners[self._user_name(node)] = [self._user_name(p) for p in partners]
        for user, metrics in record.metrics.items():  # dp = true: what each user has spent
            if "dp-epsilon" in metrics:
                record.privacy[user] = {
                    "epsilon": metrics["dp-epsilon"],
                    "delta": metrics.get("dp-delta", self.config.dp_delta),
                }
        start = time.perf_counter()
        if state.next is not None:
            state.next.payloads = self._compute_payloads(
                representations, server_round, record, state.predictions, state.teacher_requests
            )
            self._next = state.next
        record.server_ms = (time.perf_counter() - start) * 1000
        record.seconds = time.perf_counter() - state.started
        self.results.rounds.append(record)
        if not record.replied and state.errors and state.errors == set(state.messages):
            reasons = sorted(set(record.failed.values()))
            raise RunFailed(f"round {server_round}: every user failed: {'; '.join(reasons)}")
        logger.info(
            self.results.progress_line(record, self.config.num_server_rounds, len(state.messages))
        )
        self._round = None
        if self.checkpoint_dir is not None:  # the round is on disk before the next starts
            self.results.write(self.checkpoint_dir)
            save_checkpoint(self.checkpoint_dir, self.checkpoint())
        means = self.results.task_means(record)  # for Flower's own history
        return None, MetricRecord({task: float(mean) for task, mean in means.items()})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Nothing: each user evaluates on its held-out data within the train reply."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (see :meth:`configure_evaluate`)."""
        return None

    # ------------------------------------------------------------------ steps

    def _draw_public_batch(self) -> tuple[int, ...]:
        """The next public batch: B distinct indices from the seeded generator."""
        perm = torch.randperm(self.config.public_size, generator=self._batch_rng)
        return tuple(perm[: self.config.public_batch_size].tolist())

    def _select_nodes(self, grid: Grid) -> list[int]:
        """Wait (bounded) for ``min-nodes`` nodes, then sample ``fraction-train`` of them."""
        deadline = time.monotonic() + self.config.node_wait_timeout
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < self.config.min_nodes and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(NODE_POLL_SECONDS, left))
            nodes = sorted(grid.get_node_ids())
        if len(nodes) < self.config.min_nodes:
            logger.warning(
                "only %d of min-nodes=%d nodes connected after %.0f s; going on with them",
                len(nodes), self.config.min_nodes, self.config.node_wait_timeout,
            )  # fmt: skip
        self.results.connected_nodes = max(self.results.connected_nodes, len(nodes))
        sampled = math.ceil(self.config.fraction_train * len(nodes))
        count = max(min(len(nodes), self.config.min_nodes), sampled)
        if count >= len(nodes):
            return nodes
        picks = torch.randperm(len(nodes), generator=self._sample_rng)[:count].tolist()
        return sorted(nodes[p] for p in picks)

    def _collect(
        self,
        server_round: int,
        replies: Iterable[Message],
        state: RoundInFlight,
        record: RoundRecord,
    ) -> dict[int, torch.Tensor]:
        """Validate each reply; keep metrics and Z of the good ones, log the others."""
        by_message = {msg.metadata.message_id: node for node, msg in state.messages.items()}
        seen: set[int] = set()
        representations: dict[int, torch.Tensor] = {}
        for reply in replies:
            node = by_message.get(reply.metadata.reply_to_message_id)
            if node is None or node in seen:
                logger.warning("round %d: ignoring an unsolicited or duplicate reply", server_round)
                continue
            seen.add(node)
            name = self._user_name(node)
            if reply.has_error():
                lines = (reply.error.reason or "").strip().splitlines()  # a traceback: keep its end
                self._fail(
                    record, name, f"error reply {reply.error.code}: {lines[-1] if lines else ''}"
                )
                state.errors.add(node)
                continue
            try:
                failure = wire.reply_failure(reply.content, node)
                if failure is not None:
                    user_id, reason = failure
                    if user_id:
                        self._node_user[node] = name = user_id
                    self._fail(record, name, reason)
                    state.errors.add(node)
                    continue
                name = self._register(node, wire.reply_user(reply.content, node))
                metrics = wire.reply_metrics(reply.content, node)
                if state.next is not None:
                    representations[node] = wire.representation_from_records(
                        reply.content,
                        round_id=state.next.round_id,
                        rows=len(state.next.indices),
                        dim=self.config.embed_dim,
                        digest=wire.batch_digest(state.next.indices),
                        sender=node,
                    )
                    predictions = wire.predictions_from_records(
                        reply.content, rows=len(state.next.indices), sender=node
                    )
                    if predictions is not None and self.config.distill_weight > 0:
                        state.predictions[node] = predictions
                    request = wire.teacher_request_from_records(reply.content, sender=node)
                    if request is not None and self.config.distill_weight > 0:
                        state.teacher_requests[node] = request
            except wire.WireError as err:
                representations.pop(node, None)
                self._fail(record, name, str(err))
                continue
            record.metrics[name] = metrics
            record.replied.append(name)
            record.uplink_bytes[name] = wire.record_nbytes(reply.content)
            record.downlink_bytes[name] = state.downlink[node]
        for node in sorted(set(state.messages) - seen):
            self._fail(record, self._user_name(node), "no reply before the timeout")
        for node in seen - set(representations):
            name = self._user_name(node)
            record.downlink_bytes.setdefault(name, state.downlink[node])
        return representations

    def _register(self, node: int, user: dict[str, str]) -> str:
        """Remember which user a node serves (its first reply says so)."""
        user_id = user["user-id"]
        self._node_user[node] = user_id
        if user_id not in self.results.users:
            self.results.users[user_id] = UserInfo(
                user_id, user["model"], user["task"], user["metric"]
            )
        return user_id

    def _user_name(self, node: int) -> str:
        return self._node_user.get(node) or self._absent_names.get(node) or f"node-{node}"

    def _fail(self, record: RoundRecord, name: str, reason: str) -> None:
        record.failed[name] = reason
        logger.warning("round %d: %s left out: %s", record.round, name, reason)

    def _compute_payloads(
        self,
        representations: dict[int, torch.Tensor],
        server_round: int,
        record: RoundRecord,
        predictions: dict[int, tuple[str, torch.Tensor]] | None = None,
        teacher_requests: dict[int, str] | None = None,
    ) -> dict[int, UserPayload]:
        representations = self._screen(representations, server_round, record)
        if len(representations) < self.config.quorum:
            logger.warning(
                "round %d: %d valid representations, below quorum=%d: no payloads next round",
                server_round, len(representations), self.config.quorum,
            )  # fmt: skip
            return {}
        # Users, not node ids, fix the order of the Gram and of the partner draws, so a run
        # does not depend on which node ids a launch handed out.
        order = sorted(representations, key=lambda node: (self._user_name(node), node))
        names = [self._user_name(node) for node in order]
        payloads = build_payloads(
            {rank: representations[node] for rank, node in enumerate(order)},
            num_partners=self.config.num_partners,
            tau_alpha=self.config.tau_alpha,
            generator=self._partner_rng,
            device=self.device,
            dense=self.config.payload == "dense" and self.algorithm.supports_dense,
            max_dense_bytes=wire.GRPC_MAX_MESSAGE_BYTES,
            selection=self.config.partner_selection,
            exploration=self.config.partner_exploration,
            rescore=lambda cka: gain_scores(names, [*self.results.rounds, record], cka),
        )
        by_node = {
            order[rank]: replace(payload, partner_ids=tuple(order[p] for p in payload.partner_ids))
            for rank, payload in payloads.items()
        }
        if predictions:
            by_node = self._attach_teachers(by_node, predictions, record, teacher_requests or {})
        return by_node

    def _attach_teachers(
        self,
        payloads: dict[int, UserPayload],
        predictions: dict[int, tuple[str, torch.Tensor]],
        record: RoundRecord,
        teacher_requests: dict[int, str],
    ) -> dict[int, UserPayload]:
        """Give each user the consensus of its label-space peers' predictions (distillation).

        Peers are every other user of the same label space whose Z made it into this
        round's payloads (a screened-out user teaches no one), not only its partners; their
        predictions are averaged, or weighted per sample by their certainty
        (``distill-teacher``). A user that asked for a teacher without sending predictions
        (``teacher_requests``, ``distill-presence``) learns from the same peers and teaches
        no one, unless segmentation peers sent presence of its classes
        (``presence-teacher = "segmentation"``): then their mean presence is its teacher.
        Presence senders are taught by no one.
        """
        names = {node: self._user_name(node) for node in payloads}
        by_confidence = self.config.distill_teacher == "confidence"
        consensus = teacher_by_confidence if by_confidence else teacher_mean
        wanted = {node: space for node, (space, _) in predictions.items()}
        wanted |= {node: space for node, space in teacher_requests.items() if node not in wanted}
        out = dict(payloads)
        for node, payload in payloads.items():
            if node not in wanted:
                continue
            space = wanted[node]
            if space.startswith(wire.presence_space("")):
                continue  # a presence sender learns from no one
            kind, peers = "classes", self._teacher_peers(node, space, payloads, predictions)
            if node in teacher_requests:
                presence = self._teacher_peers(
                    node, wire.presence_space(space), payloads, predictions
                )
                if presence:
                    kind, peers = "presence", presence
            if not peers:
                continue
            rows = [predictions[other][1] for other in peers]
            teacher = teacher_mean(rows) if kind == "presence" else consensus(rows)
            out[node] = replace(payload, teacher=teacher, teacher_kind=kind)
            record.teachers[names[node]] = [names[other] for other in peers]
        return out

    def _teacher_peers(
        self,
        node: int,
        space: str,
        payloads: dict[int, UserPayload],
        predictions: dict[int, tuple[str, torch.Tensor]],
    ) -> list[int]:
        """Every other user of the round's payloads that sent predictions under ``space``."""
        return sorted(
            (other for other in payloads if other != node and other in predictions
             and predictions[other][0] == space),
            key=self._user_name,
        )  # fmt: skip

    def _screen(
        self, representations: dict[int, torch.Tensor], server_round: int, record: RoundRecord
    ) -> dict[int, torch.Tensor]:
        """Score the round's Z (``screening``), record it, and drop the excluded users."""
        if self.config.screening == "off" or len(representations) < 2:
            return representations
        by_user = {self._user_name(node): node for node in representations}
        # Seeded by the run seed and the round alone: no generator state to checkpoint.
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + server_round)
        history = {
            user: [r.screening[user]["round-score"] for r in self.results.rounds
                   if user in r.screening]
            for user in by_user
        }  # fmt: skip
        screens = screen(
            {user: representations[node] for user, node in by_user.items()},
            mode=self.config.screening,
            threshold=self.config.screening_threshold,
            min_rounds=self.config.screening_min_rounds,
            generator=generator,
            history=history,
        )
        record.screening = {user: s.to_dict() for user, s in screens.items()}
        excluded = sorted(user for user, s in screens.items() if s.excluded)
        if excluded:
            logger.warning(
                "round %d: screening excludes %s from the next payloads (scores %s)",
                server_round, ", ".join(excluded),
                ", ".join(f"{screens[u].score:.1f}" for u in excluded),
            )  # fmt: skip
        return {node: z for node, z in representations.items()
                if not screens[self._user_name(node)].excluded}  # fmt: skip
