"""The checks :mod:`fedmuscle_flwr.wire` runs on what arrives, on plain values (no Flower).

Each check raises :class:`WireError`, which names the sender, the field and what is wrong,
so the strategy can leave that one sender out of the round and carry on. Callers import
all of this from :mod:`fedmuscle_flwr.wire`, the one checked boundary.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ALLOWED_DTYPES",
    "NORM_ATOL",
    "PROBABILITY_ATOL",
    "WireError",
    "batch_digest",
    "check_decoded",
    "check_indices",
    "check_round",
    "check_size",
    "finite",
    "finite_metrics",
    "finite_unit_rows",
    "non_empty_strings",
    "presence_rows",
    "probability_rows",
]

#: Float dtypes accepted on the wire; arrays are converted to float32 on arrival.
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64"})
#: Row-norm tolerance on arrival: loose enough for bfloat16/float16 encoders; rows are then
#: re-normalised exactly so the loss sees unit rows.
NORM_ATOL = 1e-2
#: Tolerance on class-probability rows (entries >= -tol, each row sums to 1 within tol);
#: rows are then clipped at 0 and re-normalised.
PROBABILITY_ATOL = 1e-2


class WireError(ValueError):
    """A record that failed validation on arrival.

    Attributes
    ----------
    sender
        Node id of the sender when known (None on the client, for server payloads).
    field
        The record or array that was wrong.
    """

    def __init__(self, reason: str, *, field: str, sender: int | None = None) -> None:
        who = f" from node {sender}" if sender is not None else ""
        super().__init__(f"invalid {field}{who}: {reason}")
        self.reason = reason
        self.field = field
        self.sender = sender


def batch_digest(indices: Sequence[int]) -> str:
    """Short digest of the public batch's indices; both sides must agree on it."""
    data = np.asarray(list(indices), dtype=np.int64).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def check_round(declared: object, round_id: int, field: str, sender: int | None) -> None:
    """Refuse a record that declares another round than ``round_id`` (a stale one)."""
    if declared != round_id:
        raise WireError(
            f"stale round {declared!r}, expected {round_id}", field=field, sender=sender
        )


def check_indices(values: object, key: str, public_size: int) -> tuple[int, ...] | None:
    """A list of at least 2 public-set indices in ``[0, public_size)``, or None if absent."""
    if values is None:
        return None
    if (
        not isinstance(values, list)
        or len(values) < 2
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < public_size for v in values
        )
    ):
        raise WireError(
            f"{key} must list at least 2 indices in [0, {public_size}), got {values!r}",
            field="instruction",
        )
    return tuple(int(v) for v in values)


def check_size(nbytes: int, max_bytes: int, field: str, sender: int | None) -> None:
    """Refuse an array of more than ``max_bytes`` before decoding it."""
    if nbytes > max_bytes:
        raise WireError(
            f"{nbytes:,} bytes, over the limit of {max_bytes:,}", field=field, sender=sender
        )


def check_decoded(
    decoded: np.ndarray,
    dtype: str,
    shape: Sequence[int],
    field: str,
    sender: int | None,
) -> np.ndarray:
    """A decoded array of an allowed dtype that matches its declared ``dtype`` and ``shape``."""
    if decoded.dtype.name not in ALLOWED_DTYPES:
        raise WireError(
            f"dtype {decoded.dtype.name}, expected one of {sorted(ALLOWED_DTYPES)}",
            field=field,
            sender=sender,
        )
    if decoded.dtype.name != dtype or tuple(decoded.shape) != tuple(shape):
        raise WireError(
            f"metadata says {dtype}{list(shape)} but the data is "
            f"{decoded.dtype.name}{list(decoded.shape)}",
            field=field,
            sender=sender,
        )
    return decoded


def finite(array: np.ndarray, field: str) -> Tensor:
    """The array as a float32 tensor, refusing NaN and inf."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    if not torch.isfinite(tensor).all():
        raise WireError("holds NaN or inf values", field=field)
    return tensor


def finite_unit_rows(array: np.ndarray, field: str, sender: int | None) -> Tensor:
    """Finite rows of L2 norm 1 (within :data:`NORM_ATOL`), re-normalised, as float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if not torch.isfinite(tensor).all():
        raise WireError("holds NaN or inf values", field=field, sender=sender)
    norms = torch.linalg.vector_norm(tensor.double(), dim=-1)
    worst = (norms - 1).abs().max().item() if norms.numel() else 0.0
    if worst > NORM_ATOL:
        raise WireError(
            f"rows must be L2-normalised; the worst is off by {worst:.3g} "
            "(a collapsed, scaled or un-normalised encoder output)",
            field=field,
            sender=sender,
        )
    return torch.nn.functional.normalize(tensor.float(), dim=-1)


def _finite_class_matrix(array: np.ndarray, field: str, sender: int | None) -> Tensor:
    """A finite (B, K) float64 matrix with K >= 2 classes, or a :class:`WireError`."""
    if array.ndim != 2 or array.shape[1] < 2:
        raise WireError(
            f"shape {array.shape}, expected (rows, classes) with at least 2 classes",
            field=field,
            sender=sender,
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).double()
    if not torch.isfinite(tensor).all():
        raise WireError("holds NaN or inf values", field=field, sender=sender)
    return tensor


def presence_rows(array: np.ndarray, field: str, sender: int | None) -> Tensor:
    """A (B, K) matrix of finite presence probabilities in [0, 1] (K >= 2), as float32."""
    tensor = _finite_class_matrix(array, field, sender)
    if tensor.numel() and (
        tensor.min().item() < -PROBABILITY_ATOL or tensor.max().item() > 1 + PROBABILITY_ATOL
    ):
        raise WireError(
            "presence values must lie in [0, 1] (send probabilities, not logits)",
            field=field,
            sender=sender,
        )
    return tensor.clamp(0, 1).float()


def probability_rows(array: np.ndarray, field: str, sender: int | None) -> Tensor:
    """A (B, K) matrix of finite class-probability rows (K >= 2), re-normalised, as float32."""
    tensor = _finite_class_matrix(array, field, sender)
    worst_sum = (tensor.sum(dim=-1) - 1).abs().max().item() if tensor.numel() else 0.0
    if tensor.min().item() < -PROBABILITY_ATOL or worst_sum > PROBABILITY_ATOL:
        raise WireError(
            f"rows must be class probabilities (>= 0, summing to 1); the worst sum is off by "
            f"{worst_sum:.3g} (send softmax outputs, not logits)",
            field=field,
            sender=sender,
        )
    tensor = tensor.clamp_min(0)
    return (tensor / tensor.sum(dim=-1, keepdim=True)).float()


def finite_metrics(items: Iterable[tuple[str, object]], sender: int) -> dict[str, float]:
    """Reported metrics as floats, refusing anything that is not a finite number."""
    metrics = {}
    for name, value in items:
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise WireError(
                f"{name} = {value!r} is not a finite number", field="metrics", sender=sender
            )
        metrics[name] = float(value)
    return metrics


def non_empty_strings(
    record: Mapping[str, object], keys: Sequence[str], field: str, sender: int
) -> dict[str, str]:
    """The record's ``keys``, each of which must be a non-empty string."""
    values = {k: record.get(k) for k in keys}
    if not all(isinstance(v, str) and v for v in values.values()):
        raise WireError(
            f"needs non-empty {', '.join(keys)}, got {values!r}", field=field, sender=sender
        )
    return {k: str(v) for k, v in values.items()}
