"""A user's training settings: the run config with the user's profile overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedmuscle_flwr.algorithms import list_algorithms
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.federation import UserProfile
from fedmuscle_flwr.privacy import PrivacySettings

__all__ = ["TrainSettings"]


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one user's local work (run config, with per-user overrides)."""

    algorithm: str = "muscle"
    tau: float = 0.1
    tau_alpha: float = 0.1
    contrastive_weight: float = 1.0
    contrastive_steps: int = 1
    projection_steps: int = 0  # steps on the projection head alone before the contrastive ones
    target_decay: float = 0.0  # the rows sent: a moving average of the projection (0: itself)
    local_steps: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    amp: bool = False
    contrastive_order: str = "before"
    public_norm: str = "train"
    optimizer_state: str = "shared"
    gate: str = "off"
    gate_tolerance: float = 0.0
    gate_max_scale: float = 1.0
    gate_min_scale: float = 0.0
    gate_scales_distill: bool = True
    gate_criterion: str = "loss"  # or "metric": the validation primary metric, loss breaks ties
    fallback_criterion: str = "loss"  # how evaluate() picks between joined and alone
    fallback_confidence: float = 0.8  # bootstrap: share of resamples the joined must win
    fallback_window: int = 1  # bootstrap: rounds of validation outputs pooled per decision
    fallback_last_share: float = 0.0  # bootstrap: share the joined must win in the last round
    distill_weight: float = 0.0  # weight of the distillation loss on the public batch
    distill_temperature: float = 2.0
    distill_row_weight: str = "uniform"  # or "certainty": each row by its teacher's certainty
    distill_presence: bool = False  # multi-label users learn presence from single-label peers
    presence_teacher: str = "classes"  # or "segmentation": dense users send image presence
    dp: bool = False  # DP-SGD for the supervised steps (fedmuscle_flwr.privacy)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    private_steps: int = 0  # the most DP steps the run can take (sets the noise)
    weight_average: str = "off"  # or "ema": evaluate an average of the weights over rounds
    weight_average_decay: float = 0.5  # ema: the average's share kept each round

    def __post_init__(self) -> None:
        if self.algorithm not in list_algorithms():
            raise ValueError(
                f"algorithm must be one of {list_algorithms()}, got {self.algorithm!r}"
            )

    @classmethod
    def for_user(cls, config: RunConfig, profile: UserProfile) -> TrainSettings:
        """The run's settings with the profile's overrides (learning rate, local steps)."""
        return cls(
            algorithm=config.algorithm,
            tau=config.tau,
            tau_alpha=config.tau_alpha,
            contrastive_weight=config.contrastive_weight,
            contrastive_steps=config.contrastive_steps,
            projection_steps=config.projection_steps,
            target_decay=config.target_decay,
            local_steps=profile.local_steps or config.local_steps,
            batch_size=config.batch_size,
            learning_rate=profile.learning_rate or config.learning_rate,
            amp=config.amp,
            contrastive_order=config.contrastive_order,
            public_norm=config.public_norm,
            optimizer_state=config.optimizer_state,
            gate=config.gate,
            gate_tolerance=config.gate_tolerance,
            gate_max_scale=config.gate_max_scale,
            gate_min_scale=config.gate_min_scale,
            gate_scales_distill=config.gate_scales_distill,
            gate_criterion=config.gate_criterion,
            fallback_criterion=config.fallback_criterion,
            fallback_confidence=config.fallback_confidence,
            fallback_window=config.fallback_window,
            fallback_last_share=config.fallback_last_share,
            distill_weight=config.distill_weight,
            distill_temperature=config.distill_temperature,
            distill_row_weight=config.distill_row_weight,
            distill_presence=config.distill_presence,
            presence_teacher=config.presence_teacher,
            dp=config.dp,
            privacy=PrivacySettings(
                epsilon=config.dp_epsilon,
                delta=config.dp_delta,
                max_grad_norm=config.dp_max_grad_norm,
            ),
            private_steps=config.private_steps,
            weight_average=config.weight_average,
            weight_average_decay=config.weight_average_decay,
        )
