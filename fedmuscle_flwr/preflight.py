"""Checks made before a run starts: users' model types, tasks and configs; the data source.

``simulate`` runs them before launching Flower, and the ServerApp at its start (for plain
``flwr run`` and deployment), so a typo in a federation file stops the run in a second
with a message naming the user, instead of failing inside every ClientApp of every round.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.data.sources import get_data_source
from fedmuscle_flwr.federation import Federation, UserProfile, load_federation
from fedmuscle_flwr.models.registry import MODELS
from fedmuscle_flwr.tasks import get_task

__all__ = ["check_run", "user_problems"]

# What the ClientApp passes to every builder besides the user's model config.
_PASSED_BY_THE_CLIENT = ("task", "num_classes", "embed_dim")


def user_problems(profile: UserProfile) -> list[str]:
    """What is wrong with one user's model type, task and model config (empty if nothing)."""
    problems = []
    try:
        get_task(profile.task)
    except KeyError as err:
        problems.append(f"user {profile.id!r}: {err.args[0] if err.args else err}")
    try:
        builder = MODELS.get(profile.model)
    except KeyError as err:
        problems.append(f"user {profile.id!r}: {err.args[0] if err.args else err}")
        return problems
    unknown = _unknown_keywords(builder, [*profile.model_config, *_PASSED_BY_THE_CLIENT])
    if unknown:
        problems.append(
            f"user {profile.id!r}: model {profile.model!r} takes no config key(s) {unknown} "
            f"(its builder accepts: {_keywords(builder)})"
        )
    return problems


def check_run(config: RunConfig, federation: Federation | None = None) -> Federation:
    """Check every user of the run's federation; raise one ConfigError listing all problems."""
    federation = federation or load_federation(config.federation)
    problems = [p for profile in federation.users for p in user_problems(profile)]
    try:
        get_data_source(config.dataset)
    except KeyError as err:
        problems.append(f"dataset: {err.args[0] if err.args else err}")
    if problems:
        raise ConfigError(
            f"federation {federation.source!r}: " + "; ".join(problems) + ". Fix the "
            "federation file, or install the plug-in that registers the missing names."
        )
    return federation


def _unknown_keywords(builder: Callable[..., Any], keys: list[str]) -> list[str]:
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the builder decides
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    names = {p.name for p in parameters}
    return sorted(k for k in keys if k not in names)


def _keywords(builder: Callable[..., Any]) -> list[str]:
    return sorted(inspect.signature(builder).parameters)
