"""The FedMuscle ClientApp: one train handler and the user's state on disk.

Per round: contrastive step on the round's public batch (when the server sent a payload),
local supervised steps, evaluation on the held-out split, Z_n on the next public batch,
reply. The user profile comes from the node config (``user`` in deployment,
``partition-id`` in simulation) and the federation file named by the run config.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import replace
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client_app.state import StateStore, default_state_root
from fedmuscle_flwr import wire
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.data.users import UserData, load_user_data
from fedmuscle_flwr.federation import Federation, UserProfile, load_federation
from fedmuscle_flwr.models import build_client_model
from fedmuscle_flwr.tasks import get_task
from fedmuscle_flwr.training import Trainer, TrainSettings, resolve_device

logger = logging.getLogger("fedmuscle.client")

app = ClientApp()


def user_seed(config: RunConfig, profile: UserProfile) -> int:
    """A user's own seed, the same in every process: model init and batch order."""
    return (config.seed * 1_000_003 + zlib.crc32(profile.id.encode())) % 2**31


def user_data(config: RunConfig, profile: UserProfile, federation: Federation) -> UserData:
    """The user's train/validation/test split and the public set, as this run config asks."""
    return load_user_data(
        profile,
        federation,
        source=config.dataset,
        public_size=config.public_size,
        seed=config.seed,
        validation_fraction=config.validation_fraction,
        label_budget=config.label_budget,
    )


def build_trainer(config: RunConfig, profile: UserProfile, federation_name: str) -> Trainer:
    """Build the user's model, data and trainer from data alone (no state)."""
    data = user_data(config, profile, load_federation(federation_name))
    model = build_client_model(
        profile.model,
        seed=user_seed(config, profile),
        **{"task": profile.task, "num_classes": data.num_classes, "embed_dim": config.embed_dim,
           **dict(profile.model_config)},
    )  # fmt: skip
    if config.projection != "linear":  # drawn apart: the encoder and head keep their weights
        model.use_projection(config.projection, seed=user_seed(config, profile) + 1)
    settings = TrainSettings.for_user(config, profile)
    trainer = Trainer(
        model, data, settings, device=resolve_device(config.device), seed=user_seed(config, profile)
    )
    if config.uses_fallback:  # the user's local baseline, step for step
        alone = replace(config, algorithm="local", fallback="off")
        trainer.fallback = build_trainer(alone, profile, federation_name)
    return trainer


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run one round of the user's local work; reply with metrics and Z_n, or why it failed.

    A failure (bad config, a model that cannot be built, a non-finite loss, ...) is logged
    with its traceback here and answered with a failure record naming the user, so the
    server leaves out this user only and records why under its id.
    """
    user_id = ""
    try:
        config = RunConfig.from_run_config(context.run_config)
        federation = load_federation(config.federation)
        profile = federation.user_for_node(context.node_config)
        user_id = profile.id
        if not config.allow_missing_users:
            federation.check_every_user_has_a_node(context.node_config)
        return _train(msg, context, config, profile)
    except Exception as err:
        logger.exception("user %s: round failed", user_id or context.node_config)
        reason = f"{type(err).__name__}: {err}"
        return Message(wire.failure_to_records(user_id=user_id, reason=reason), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which user this node serves (a resumed run's server asks before its first round)."""
    config = RunConfig.from_run_config(context.run_config)
    profile = load_federation(config.federation).user_for_node(context.node_config)
    user = {
        "user-id": profile.id,
        "model": profile.model,
        "task": profile.task,
        "metric": get_task(profile.task).primary_metric,
    }
    return Message(wire.reply_to_records(metrics={}, user=user), reply_to=msg)


def _train(msg: Message, context: Context, config: RunConfig, profile: UserProfile) -> Message:
    start = time.perf_counter()
    instruction = wire.instruction_from_records(
        msg.content, public_size=config.public_size, dim=config.embed_dim
    )
    root = context.node_config.get("state-dir") or config.state_dir or default_state_root()
    # A server that names no experiment (an older one) gets state keyed by Flower's run id.
    experiment = instruction.experiment or f"flwr-run-{context.run_id}"
    store = StateStore(Path(str(root)), experiment, profile.id)
    trainer = store.open(
        instruction.round_id, lambda: build_trainer(config, profile, config.federation)
    )
    setup_seconds = time.perf_counter() - start  # data, model, restored state
    with trainer.random_state():
        metrics, representation = _round_work(trainer, instruction, config)
    trainer.rounds_done += 1
    store.save(trainer, instruction.round_id)
    metrics["client-seconds"] = time.perf_counter() - start
    metrics["setup-seconds"] = setup_seconds
    metrics["rounds-trained"] = float(trainer.rounds_done)  # a user that restarted says 1
    user = {
        "user-id": profile.id,
        "model": profile.model,
        "task": profile.task,
        "metric": trainer.model.task_type.primary_metric,
    }
    content = wire.reply_to_records(metrics=metrics, user=user, representation=representation)
    return Message(content, reply_to=msg)


def _round_work(
    trainer: Trainer, instruction: wire.Instruction, config: RunConfig
) -> tuple[dict[str, float], RecordDict | None]:
    """The round's contrastive and supervised steps, evaluation and next Z (as records).

    A user that distils (``distill-weight`` > 0, a single-label task) sends its class
    probabilities on the next batch beside Z; a multi-label user with ``distill-presence``
    sends the key of its output names instead, asking for its single-label peers' teacher;
    with ``presence-teacher = "segmentation"`` a segmentation user sends its image-level
    presence of its named classes.
    """
    metrics = trainer.train_round(
        instruction.contrast_indices,
        instruction.payload,
        weight=config.lambda_at(instruction.round_id),
        lr_scale=config.lr_scale_at(instruction.round_id),
    )
    metrics |= trainer.privacy_spent()  # dp-epsilon, dp-delta with dp = true
    metrics |= trainer.evaluate()
    representation = None
    if instruction.next_indices is not None:
        z, predictions = trainer.represent_and_predict(instruction.next_indices)
        representation = wire.representation_to_records(
            z,
            round_id=instruction.round_id + 1,
            digest=wire.batch_digest(instruction.next_indices),
            predictions=predictions,
            label_space=trainer.label_space or trainer.presence_space,
            teacher_space="" if predictions is not None else trainer.teacher_space,
            presence=bool(trainer.presence_space),
        )
    return metrics, representation
