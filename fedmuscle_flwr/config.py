"""Run configuration as typed data: built once from Flower's run config, validated at the edge.

Both apps read the same keys (``[tool.flwr.app.config]`` in pyproject.toml, overridable
with ``flwr run --run-config``). Every bad value raises :class:`ConfigError` naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedmuscle_flwr.algorithms import get_algorithm, list_algorithms
from fedmuscle_flwr.models.base import PROJECTIONS

__all__ = [
    "COLLABORATION_KEYS",
    "CONTRASTIVE_ORDERS",
    "FALLBACKS",
    "FALLBACK_CRITERIA",
    "GATES",
    "PARTNER_SELECTIONS",
    "PAYLOAD_FORMS",
    "PROJECTIONS",
    "PUBLIC_NORMS",
    "ConfigError",
    "RunConfig",
]

PAYLOAD_FORMS = ("factored", "dense")
CONTRASTIVE_ORDERS = ("before", "after")  # contrastive steps before or after supervised ones
PUBLIC_NORMS = ("train", "frozen")  # norm layers on the public batch: batch stats, or frozen
GATES = ("off", "validation", "paired")
# complement: least similar first; gain: fedmuscle_flwr.partner_gain
PARTNER_SELECTIONS = ("random", "relevance", "complement", "gain")
DISTILL_TEACHERS = ("mean", "confidence")
# how a public sample counts in a student's distillation loss: equally, or by its teacher's
# certainty
DISTILL_ROW_WEIGHTS = ("uniform", "certainty")
# who teaches a multi-label user presence (distill-presence): single-label peers' classes as
# lower bounds, or segmentation peers' image-level presence (falling back to the classes)
PRESENCE_TEACHERS = ("classes", "segmentation")
OPTIMIZER_STATES = ("shared", "separate")
SCREENING_MODES = ("off", "flag", "exclude")  # fedmuscle_flwr.screening
FALLBACKS = ("off", "local", "auto")  # local: each user also trains alone, keeps the better
# model; auto: local where it can run (a validation split, no DP), else off
# what "better on validation" means for the fallback (bootstrap: fedmuscle_flwr.training.bootstrap)
FALLBACK_CRITERIA = ("loss", "metric", "bootstrap")
GATE_CRITERIA = ("loss", "metric")  # what "helped" means for the gate
# what a user evaluates and reports: its weights (off), or an exponential moving average of
# them over rounds (ema); for every algorithm, the local baseline included
WEIGHT_AVERAGES = ("off", "ema")
LR_SCHEDULES = ("constant", "cosine")
#: Keys that change nothing when ``algorithm = "local"`` (a local baseline ignores them).
COLLABORATION_KEYS = frozenset(
    {
        "num-partners",
        "public-batch-size",
        "tau",
        "tau-alpha",
        "contrastive-weight",
        "contrastive-steps",
        "projection-steps",
        "target-decay",
        "payload",
        "warmup-rounds",
        "lambda-ramp-rounds",
        "contrastive-order",
        "public-norm",
        "projection",
        "gate",
        "gate-tolerance",
        "gate-max-scale",
        "gate-min-scale",
        "gate-scales-distill",
        "gate-criterion",
        "fallback",
        "fallback-criterion",
        "fallback-confidence",
        "fallback-window",
        "fallback-last-share",
        "partner-selection",
        "partner-exploration",
        "distill-weight",
        "distill-temperature",
        "distill-teacher",
        "distill-row-weight",
        "distill-presence",
        "presence-teacher",
        "optimizer-state",
        "quorum",
        "screening",
        "screening-threshold",
        "screening-min-rounds",
    }
)


class ConfigError(ValueError):
    """A run-config value that is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a FedMuscle run is configured with (run-config keys in kebab-case)."""

    num_server_rounds: int = 20
    algorithm: str = "muscle"
    num_partners: int = 3  # M
    public_batch_size: int = 64  # B
    embed_dim: int = 128  # d, the shared representation dimension
    tau: float = 0.1
    tau_alpha: float = 0.1
    contrastive_weight: float = 0.03  # lambda
    contrastive_steps: int = 5
    projection_steps: int = 0  # steps on the projection head alone before them (0: none)
    target_decay: float = 0.0  # rows sent from a moving average of the projection (0: itself)
    local_steps: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    payload: str = "factored"
    seed: int = 0
    dataset: str = "world"
    federation: str = "default"
    public_size: int = 1024
    output_dir: str = "outputs"
    device: str = "auto"
    amp: bool = False
    fraction_train: float = 1.0
    min_nodes: int = 2
    quorum: int = 2
    node_wait_timeout: float = 120.0
    round_timeout: float = 600.0
    grid_poll_interval: float = 0.2  # s between the ServerApp's pulls for replies
    state_dir: str = ""  # client state; "" = $FEDMUSCLE_STATE_DIR or ~/.cache/fedmuscle/state
    allow_missing_users: bool = False  # a run may go on without some federation users' nodes
    resume_from: str = ""  # a run's results directory: continue it at its first unfinished round
    # ---- making collaboration pay (docs/results.md, ablation)
    warmup_rounds: int = 0  # rounds of local-only training before the contrastive term
    lambda_ramp_rounds: int = 0  # after warm-up, lambda grows linearly over this many rounds
    contrastive_order: str = "before"  # before | after the supervised steps of a round
    public_norm: str = "train"  # train | frozen: norm statistics while encoding public data
    optimizer_state: str = "shared"  # shared | separate AdamW state for the two objectives
    projection: str = "linear"  # linear | mlp: the map from encoder features to z
    validation_fraction: float = 0.15  # share of each user's train split held out (all algs)
    label_budget: int = 0  # labelled training examples per user; 0 = all of its share
    gate: str = "paired"  # off | validation | paired: keep contrastive steps that help
    gate_tolerance: float = 0.0  # relative rise of validation loss the gate accepts
    gate_max_scale: float = 1.0  # the gate may grow a user's lambda up to this multiple
    gate_min_scale: float = 0.0  # ... and shrink it down to this one (1: never shrinks)
    gate_scales_distill: bool = True  # the scale applies to distill-weight too (false: lambda only)
    gate_criterion: str = "loss"  # loss | metric (validation primary metric, loss breaks ties)
    fallback: str = "auto"  # off | local | auto: a user also trains alone, reports the better
    fallback_criterion: str = "bootstrap"  # bootstrap (a lead surviving resampling) | metric | loss
    fallback_confidence: float = 0.8  # bootstrap: share of resamples the joined model must win
    fallback_window: int = 3  # bootstrap: rounds of validation outputs pooled per decision
    fallback_last_share: float = 0.5  # bootstrap: share the joined must also win in the last round
    partner_selection: str = "relevance"  # random | relevance (CKA) | complement (1 - CKA) | gain
    partner_exploration: float = 0.25  # all but random: chance that a partner slot is random
    distill_weight: float = 1.0  # peers of one label space distil predictions on public data
    distill_temperature: float = 2.0  # T of the predictions sent and of the distillation loss
    distill_teacher: str = "confidence"  # confidence-weighted per public sample | plain mean
    distill_row_weight: str = "uniform"  # uniform | certainty (KL rows x teacher certainty)
    distill_presence: bool = False  # multi-label users learn presence of named classes from peers
    presence_teacher: str = "segmentation"  # dense peers' image presence, else classes as bounds
    screening: str = "off"  # off | flag | exclude: users whose Z agrees with no one's
    screening_threshold: float = 2.0  # agreement score (null std units) below which: flagged
    screening_min_rounds: int = 5  # rounds scored before "exclude" may leave a user out
    dp: bool = False  # DP-SGD (Opacus) for every user's supervised steps (fedmuscle_flwr.privacy)
    dp_epsilon: float = 8.0  # target epsilon per user for the whole run (inf: no noise)
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0  # per-example gradient clipping norm
    # ---- what a user evaluates (every algorithm, the local baseline included)
    weight_average: str = "off"  # off | ema: evaluate an average of the weights over rounds
    weight_average_decay: float = 0.5  # ema: the average's share kept each round
    # ---- how a user's learning rate moves over the run (every algorithm, local included)
    lr_schedule: str = "constant"  # constant | cosine: decays over num-server-rounds
    lr_final_share: float = 0.0  # cosine: the share of the learning rate it decays towards

    @property
    def private_steps(self) -> int:
        """The most DP-SGD steps a user can take in this run (the paired gate: two branches)."""
        branches = 2 if self.gate == "paired" and self.collaborative else 1
        return self.num_server_rounds * self.local_steps * branches

    def __post_init__(self) -> None:
        _choice("algorithm", self.algorithm, tuple(list_algorithms()))
        _choice("payload", self.payload, PAYLOAD_FORMS)
        _choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
        _choice("contrastive_order", self.contrastive_order, CONTRASTIVE_ORDERS)
        _choice("public_norm", self.public_norm, PUBLIC_NORMS)
        _choice("optimizer_state", self.optimizer_state, OPTIMIZER_STATES)
        _choice("projection", self.projection, PROJECTIONS)
        _choice("gate", self.gate, GATES)
        _choice("partner_selection", self.partner_selection, PARTNER_SELECTIONS)
        _choice("distill_teacher", self.distill_teacher, DISTILL_TEACHERS)
        _choice("distill_row_weight", self.distill_row_weight, DISTILL_ROW_WEIGHTS)
        _choice("presence_teacher", self.presence_teacher, PRESENCE_TEACHERS)
        _choice("screening", self.screening, SCREENING_MODES)
        _choice("fallback", self.fallback, FALLBACKS)
        _choice("fallback_criterion", self.fallback_criterion, FALLBACK_CRITERIA)
        _choice("gate_criterion", self.gate_criterion, GATE_CRITERIA)
        _choice("weight_average", self.weight_average, WEIGHT_AVERAGES)
        if not 0 <= self.weight_average_decay < 1:
            raise ConfigError(
                "weight-average-decay must be in [0, 1) (0: the last round's weights alone), "
                f"got {self.weight_average_decay!r}"
            )
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not 0 <= self.lr_final_share <= 1:
            raise ConfigError(
                f"lr-final-share must be in [0, 1] (1: no decay), got {self.lr_final_share!r}"
            )
        if not (self.dp_epsilon > 0 and not math.isnan(self.dp_epsilon)):
            raise ConfigError(f"dp-epsilon must be > 0 (inf: no noise), got {self.dp_epsilon!r}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta must be in (0, 1), got {self.dp_delta!r}")
        if not (math.isfinite(self.dp_max_grad_norm) and self.dp_max_grad_norm > 0):
            raise ConfigError(f"dp-max-grad-norm must be > 0, got {self.dp_max_grad_norm!r}")
        if not math.isfinite(self.screening_threshold):
            raise ConfigError(
                f"screening-threshold must be a finite number, got {self.screening_threshold!r}"
            )
        for name in ("warmup_rounds", "lambda_ramp_rounds", "label_budget", "projection_steps"):
            _at_least(name, getattr(self, name), 0)
        _at_least("fallback_window", self.fallback_window, 1)
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(
                f"validation-fraction must be in [0, 1), got {self.validation_fraction!r}"
            )
        if not 0 <= self.target_decay < 1:
            raise ConfigError(
                f"target-decay must be in [0, 1) (0: the projection itself), got "
                f"{self.target_decay!r}"
            )
        if not 0 <= self.partner_exploration <= 1:
            raise ConfigError(
                f"partner-exploration must be in [0, 1], got {self.partner_exploration!r}"
            )
        if not (math.isfinite(self.gate_tolerance) and self.gate_tolerance >= 0):
            raise ConfigError(f"gate-tolerance must be >= 0, got {self.gate_tolerance!r}")
        if not (math.isfinite(self.gate_max_scale) and self.gate_max_scale >= 1):
            raise ConfigError(f"gate-max-scale must be >= 1, got {self.gate_max_scale!r}")
        if not 0.5 <= self.fallback_confidence < 1:
            raise ConfigError(
                f"fallback-confidence must be in [0.5, 1), got {self.fallback_confidence!r}"
            )
        if not 0 <= self.fallback_last_share < 1:
            raise ConfigError(
                f"fallback-last-share must be in [0, 1) (0: no such condition), "
                f"got {self.fallback_last_share!r}"
            )
        if not 0 <= self.gate_min_scale <= 1:
            raise ConfigError(f"gate-min-scale must be in [0, 1], got {self.gate_min_scale!r}")
        if self.gate != "off" and self.validation_fraction == 0 and self.collaborative:
            raise ConfigError(
                f"gate={self.gate!r} needs a validation split: set validation-fraction > 0 "
                "(e.g. 0.15)"
            )
        if self.partner_selection == "gain" and self.gate == "off" and self.collaborative:
            raise ConfigError(
                'partner-selection="gain" ranks partners by the validation gain the gate '
                'measures: set gate="paired" (or "validation"), or use "relevance"'
            )
        if self.fallback == "local" and self.collaborative:
            if self.validation_fraction == 0:
                raise ConfigError(
                    'fallback="local" chooses between two models on a validation split: set '
                    "validation-fraction > 0 (e.g. 0.15)"
                )
            if self.dp:
                raise ConfigError(
                    'fallback="local" trains a second model on the private data, which DP-SGD '
                    'would have to pay for twice: use fallback="off" with dp = true'
                )
        for name in (
            "num_server_rounds",
            "num_partners",
            "contrastive_steps",
            "local_steps",
            "batch_size",
            "min_nodes",
            "public_size",
            "embed_dim",
            "screening_min_rounds",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("public_batch_size", self.public_batch_size, 2)
        _at_least("quorum", self.quorum, 2)
        if self.public_batch_size > self.public_size:
            raise ConfigError(
                f"public-batch-size ({self.public_batch_size}) must not exceed public-size "
                f"({self.public_size})"
            )
        for name in (
            "tau",
            "tau_alpha",
            "learning_rate",
            "node_wait_timeout",
            "round_timeout",
            "grid_poll_interval",
        ):
            _positive(name, getattr(self, name))
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise ConfigError(
                f"distill-weight must be >= 0 (0: no distillation), got {self.distill_weight!r}"
            )
        _positive("distill_temperature", self.distill_temperature)
        if not (math.isfinite(self.contrastive_weight) and self.contrastive_weight >= 0):
            raise ConfigError(f"contrastive-weight must be >= 0, got {self.contrastive_weight!r}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train must be in (0, 1], got {self.fraction_train!r}")

    @property
    def collaborative(self) -> bool:
        """Whether users exchange representations (every algorithm but ``local``)."""
        return get_algorithm(self.algorithm).collaborative

    @property
    def uses_fallback(self) -> bool:
        """Whether each user also trains alone for ``fallback`` in this run.

        ``auto`` turns it on in a collaborative run with a validation split and no DP.
        """
        if not self.collaborative or self.fallback == "off":
            return False
        return self.fallback == "local" or (self.validation_fraction > 0 and not self.dp)

    def exchange_at(self, round_id: int) -> bool:
        """Whether round ``round_id`` (1-based) has collaborative steps, so a payload.

        A collaborative run past its warm-up with a contrastive term (lambda > 0) or
        distillation (``distill-weight`` > 0): ``contrastive-weight = 0`` with distillation
        is distillation alone, with neither the run trains as its local baseline does.
        """
        if not self.collaborative or round_id <= self.warmup_rounds:
            return False
        return self.lambda_at(round_id) > 0 or self.distill_weight > 0

    def lambda_at(self, round_id: int) -> float:
        """Lambda of round ``round_id`` (1-based) under warm-up and ramp; 0 during warm-up."""
        active = round_id - self.warmup_rounds
        if active <= 0:
            return 0.0
        if self.lambda_ramp_rounds == 0:
            return self.contrastive_weight
        return self.contrastive_weight * min(1.0, active / self.lambda_ramp_rounds)

    def lr_scale_at(self, round_id: int) -> float:
        """The share of each user's learning rate in round ``round_id`` (1-based).

        ``constant``: 1. ``cosine``: half a cosine from 1 in round 1 towards
        ``lr-final-share``, which it would reach one round after ``num-server-rounds``, so
        the last round still takes steps: ``f + (1 - f) (1 + cos(pi (t - 1) / T)) / 2``.
        Rounds past ``num-server-rounds`` (a resumed run asked for more) stay at ``f``.
        """
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, max(0, round_id - 1) / self.num_server_rounds)
        final = self.lr_final_share
        return final + (1 - final) * (1 + math.cos(math.pi * progress)) / 2

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's run config; keys this class does not know are ignored.

        Keys under ``users.`` (the federation's user list) are read by
        :mod:`fedmuscle_flwr.federation`, not here.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                continue
            values[field.name] = _coerce(key, run_config[key], type(getattr(cls(), field.name)))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as run-config keys and values (for results.json)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name.replace('_', '-')} must be one of {list(allowed)}, got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name.replace('_', '-')} must be >= {low}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name.replace('_', '-')} must be a positive number, got {value!r}")
