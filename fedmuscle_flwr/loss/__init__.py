"""Contrastive losses of FedMuscle: the Muscle loss (factored and dense) and its baselines.

All functions take the anchor's L2-normalised representations ``z`` (B, d), which carry
gradients, and the M selected partners' representations (constants).
"""

from fedmuscle_flwr.loss.contrastive import ensemble_loss, info_nce, pairwise_loss
from fedmuscle_flwr.loss.dense import (
    build_dense_payload,
    dense_muscle_loss,
    dense_payload_bytes,
    dense_payload_numel,
    factored_payload_numel,
)
from fedmuscle_flwr.loss.muscle import (
    DEFAULT_MAX_CHUNK_ELEMENTS,
    MuscleObjective,
    muscle_loss,
    pairwise_log_alpha,
)

__all__ = [
    "DEFAULT_MAX_CHUNK_ELEMENTS",
    "MuscleObjective",
    "build_dense_payload",
    "dense_muscle_loss",
    "dense_payload_bytes",
    "dense_payload_numel",
    "ensemble_loss",
    "factored_payload_numel",
    "info_nce",
    "muscle_loss",
    "pairwise_log_alpha",
    "pairwise_loss",
]
