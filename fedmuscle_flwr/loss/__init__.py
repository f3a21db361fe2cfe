"""Losses of FedMuscle: the Muscle loss (factored and dense), its baselines, distillation.

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
from fedmuscle_flwr.loss.distillation import (
    class_probabilities,
    distillation_loss,
    image_presence,
    label_space_key,
    presence_distillation_loss,
    presence_loss,
    teacher_by_confidence,
    teacher_certainty,
    teacher_mean,
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
    "class_probabilities",
    "dense_muscle_loss",
    "dense_payload_bytes",
    "dense_payload_numel",
    "distillation_loss",
    "ensemble_loss",
    "factored_payload_numel",
    "image_presence",
    "info_nce",
    "label_space_key",
    "muscle_loss",
    "pairwise_log_alpha",
    "pairwise_loss",
    "presence_distillation_loss",
    "presence_loss",
    "teacher_by_confidence",
    "teacher_certainty",
    "teacher_mean",
]
