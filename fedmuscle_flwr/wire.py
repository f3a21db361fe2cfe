"""What crosses the wire: representations (client -> server) and payloads (server -> client).

The only library module that imports Flower. Every reader validates what arrived before
any math sees it (size, serialisation, dtype, shape, metadata, finiteness, row norms,
round id) and raises :class:`WireError`, which names the sender, the field and what to do,
so the strategy can leave that one sender out of the round and carry on. The checks on
plain values live in :mod:`fedmuscle_flwr.wire_checks`; import them from here.

Record layout in a message's :class:`~flwr.app.RecordDict`:

- representation: ArrayRecord ``"representation"`` with array ``"z"`` (B, d) and, with
  ``distill-weight`` > 0 and a single-label task, ``"predictions"`` (B, K) class
  probabilities; ConfigRecord ``"representation.meta"`` with ``round``, ``rows``, ``dim``,
  ``batch-digest`` and, with predictions, ``label-space`` (a key of the class names,
  :func:`fedmuscle_flwr.loss.label_space_key`); a user that takes a teacher without
  sending predictions (a multi-label user with ``distill-presence``) sends
  ``teacher-space`` instead, the key of its output names.
- payload: ArrayRecord ``"muscle"`` with ``"others"`` (M, B, d), ``"log-alpha-pairs"``
  (C(M,2), B, B), in dense form ``"aggregated"`` (B^M, d) and ``"log-alpha"`` (B^M,), and,
  with distillation, ``"teacher"`` (B, K) (the peers' consensus class probabilities, see
  ``distill-teacher``);
  ConfigRecord ``"muscle.meta"`` with ``round``, ``partner-ids``, ``form`` (``factored``,
  ``dense``, or ``partners`` when only the partners' rows are sent: pairwise, ensemble).
- instruction (server -> client, one per round): ConfigRecord ``"instruction"`` with
  ``round``, ``experiment`` (the run's identity), ``contrast-indices`` (the public batch
  the payload belongs to) and ``next-indices`` (the public batch to represent for the
  next round), plus the payload.
- reply (client -> server): the representation of the next batch, MetricRecord
  ``"metrics"`` and ConfigRecord ``"user"`` (``user-id``, ``model``, ``task``, and
  ``metric``, the name of its primary metric); or, when the user's round failed, only
  ConfigRecord ``"failure"`` with ``user-id`` (empty when the user is unknown) and
  ``reason``, so the server records the failure under the user's id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from fedmuscle_flwr.payload import UserPayload
from fedmuscle_flwr.wire_checks import (
    ALLOWED_DTYPES,
    NORM_ATOL,
    WireError,
    batch_digest,
    check_decoded,
    check_indices,
    check_round,
    check_size,
    finite,
    finite_metrics,
    finite_unit_rows,
    non_empty_strings,
    presence_rows,
    probability_rows,
)

__all__ = [
    "ALLOWED_DTYPES",
    "DEFAULT_MAX_REPRESENTATION_BYTES",
    "GRPC_MAX_MESSAGE_BYTES",
    "NORM_ATOL",
    "PAYLOAD_KEY",
    "REPRESENTATION_KEY",
    "USER_FIELDS",
    "Instruction",
    "WireError",
    "batch_digest",
    "failure_to_records",
    "has_payload",
    "instruction_from_records",
    "instruction_to_records",
    "payload_from_records",
    "payload_to_records",
    "predictions_from_records",
    "presence_space",
    "record_nbytes",
    "reply_failure",
    "reply_metrics",
    "reply_to_records",
    "reply_user",
    "representation_from_records",
    "representation_to_records",
    "teacher_request_from_records",
]

#: Largest gRPC message Flower accepts (``flwr.supercore.grpc.GRPC_MAX_MESSAGE_LENGTH`` in
#: 1.39); no payload is built bigger than this.
GRPC_MAX_MESSAGE_BYTES = 2_147_483_647

REPRESENTATION_KEY = "representation"
PAYLOAD_KEY = "muscle"
#: Default cap on one uploaded representation matrix (256 x 8192 float32 is 8 MiB).
DEFAULT_MAX_REPRESENTATION_BYTES = 64 * 1024 * 1024
#: What a reply's ``user`` record holds.
USER_FIELDS = ("user-id", "model", "task", "metric")


def record_nbytes(content: RecordDict) -> int:
    """Bytes of array data in a message's content (for uplink/downlink accounting)."""
    return sum(
        len(array.data) for record in content.array_records.values() for array in record.values()
    )


# ----------------------------------------------------------------- representation


def representation_to_records(
    z: Tensor,
    *,
    round_id: int,
    digest: str,
    predictions: Tensor | None = None,
    label_space: str = "",
    teacher_space: str = "",
    presence: bool = False,
) -> RecordDict:
    """Records carrying Z_n (B, d) for ``round_id``; bfloat16 is sent as float32.

    ``predictions`` (B, K) class probabilities on the same batch, with the ``label_space``
    key they belong to, travel beside Z for distillation; with ``presence`` they are
    instead each class's image-level presence in [0, 1] (a segmentation user's, read back
    under :func:`presence_space`). ``teacher_space`` asks for a teacher of that label space
    without sending predictions (``distill-presence``).
    """
    array = z.detach().to(torch.float32 if z.dtype == torch.bfloat16 else z.dtype).cpu()
    arrays = {"z": Array(array.numpy())}
    meta: dict[str, str | int] = {
        "round": round_id,
        "rows": array.shape[0],
        "dim": array.shape[1],
        "batch-digest": digest,
    }
    if predictions is not None:
        if not label_space:
            raise ValueError("predictions need the label_space they belong to")
        arrays["predictions"] = Array(predictions.detach().float().cpu().numpy())
        meta["label-space"] = label_space
        if presence:
            meta["prediction-kind"] = "presence"
    if teacher_space:
        if predictions is not None:
            raise ValueError("a user sending predictions takes its teacher in its label_space")
        meta["teacher-space"] = teacher_space
    return RecordDict(
        {
            REPRESENTATION_KEY: ArrayRecord(arrays),
            f"{REPRESENTATION_KEY}.meta": ConfigRecord(meta),  # type: ignore[arg-type]
        }
    )


def representation_from_records(
    content: RecordDict,
    *,
    round_id: int,
    rows: int,
    digest: str | None = None,
    dim: int | None = None,
    sender: int | None = None,
    max_bytes: int = DEFAULT_MAX_REPRESENTATION_BYTES,
) -> Tensor:
    """Read and validate Z_n from a reply; returns a float32 (B, d) tensor on the CPU.

    Raises
    ------
    WireError
        On anything that is not a finite, unit-norm (rows, dim) float matrix for this round.
    """
    meta = _config(content, f"{REPRESENTATION_KEY}.meta", sender)
    check_round(meta.get("round"), round_id, f"{REPRESENTATION_KEY}.meta", sender)
    if digest is not None and meta.get("batch-digest") != digest:
        raise WireError(
            f"batch digest {meta.get('batch-digest')!r} != {digest!r}: Z was computed on "
            "another public batch",
            field=f"{REPRESENTATION_KEY}.meta",
            sender=sender,
        )
    array = _array(content, REPRESENTATION_KEY, "z", sender, max_bytes)
    field = f"{REPRESENTATION_KEY}/z"
    expected = (rows, dim if dim is not None else array.shape[-1])
    if array.ndim != 2 or array.shape != expected:
        raise WireError(f"shape {array.shape}, expected {expected}", field=field, sender=sender)
    declared = (meta.get("rows"), meta.get("dim"))
    if declared != array.shape:
        raise WireError(
            f"metadata says (rows, dim) = {declared!r} but the array is {array.shape}",
            field=field,
            sender=sender,
        )
    return finite_unit_rows(array, field, sender)


def predictions_from_records(
    content: RecordDict,
    *,
    rows: int,
    sender: int | None = None,
    max_bytes: int = DEFAULT_MAX_REPRESENTATION_BYTES,
) -> tuple[str, Tensor] | None:
    """``(label space, class probabilities (rows, K))`` of a reply, or None when it sent none.

    Presence predictions (``prediction-kind = "presence"``) come back as
    ``(presence_space(label space), presence (rows, K))``. Read after
    :func:`representation_from_records` (which checks round and batch).

    Raises
    ------
    WireError
        On predictions without a label space (or the reverse), a key that does not name K
        classes, a wrong shape, or rows that are not probabilities.
    """
    meta = _config(content, f"{REPRESENTATION_KEY}.meta", sender)
    space = meta.get("label-space")
    record = content.array_records.get(REPRESENTATION_KEY)
    has_array = record is not None and "predictions" in record
    if space is None and not has_array:
        return None
    field = f"{REPRESENTATION_KEY}/predictions"
    if not isinstance(space, str) or not space or not has_array:
        raise WireError(
            f"predictions and a label-space string come together; got label-space={space!r} "
            f"and {'an' if has_array else 'no'} array",
            field=field,
            sender=sender,
        )
    array = _array(content, REPRESENTATION_KEY, "predictions", sender, max_bytes)
    if array.ndim != 2 or array.shape[0] != rows:
        raise WireError(f"shape {array.shape}, expected ({rows}, K)", field=field, sender=sender)
    if space.split(":", 1)[0] != str(array.shape[1]):
        raise WireError(
            f"label-space {space!r} does not name {array.shape[1]} classes",
            field=field,
            sender=sender,
        )
    kind = meta.get("prediction-kind", "classes")
    if kind == "presence":
        return presence_space(space), presence_rows(array, field, sender)
    if kind != "classes":
        raise WireError(
            f"prediction-kind must be 'classes' or 'presence', got {kind!r}",
            field=f"{REPRESENTATION_KEY}.meta/prediction-kind",
            sender=sender,
        )
    return space, probability_rows(array, field, sender)


def presence_space(label_space: str) -> str:
    """The key under which image-level presence of ``label_space``'s classes is kept."""
    return f"presence/{label_space}"


def teacher_request_from_records(content: RecordDict, *, sender: int | None = None) -> str | None:
    """The label space a reply asks a teacher in without sending predictions, or None.

    Raises
    ------
    WireError
        On a ``teacher-space`` that is not a label-space key (``"<K>:<digest>"``, K >= 2),
        or one sent beside predictions.
    """
    meta = _config(content, f"{REPRESENTATION_KEY}.meta", sender)
    space = meta.get("teacher-space")
    if space is None:
        return None
    field = f"{REPRESENTATION_KEY}.meta/teacher-space"
    key = space if isinstance(space, str) else ""
    count, _, digest = key.partition(":")
    if not (count.isdigit() and int(count) >= 2 and digest):
        raise WireError(
            f"teacher-space must be a label-space key '<K>:<digest>' with K >= 2, got {space!r}",
            field=field,
            sender=sender,
        )
    if "label-space" in meta:
        raise WireError(
            "teacher-space and label-space together: a user sending predictions takes its "
            "teacher in its label space",
            field=field,
            sender=sender,
        )
    return key


# ----------------------------------------------------------------- payload


def payload_to_records(
    payload: UserPayload, *, round_id: int, with_log_alpha: bool = True
) -> RecordDict:
    """Records carrying one user's payload for ``round_id``.

    ``with_log_alpha=False`` sends only the partners' rows (form ``partners``), for the
    pairwise and ensemble baselines, which do not use alpha.
    """
    arrays = {"others": payload.others}
    form = "factored" if with_log_alpha else "partners"
    if with_log_alpha:
        arrays["log-alpha-pairs"] = payload.log_alpha_pairs
    if with_log_alpha and payload.aggregated is not None and payload.log_alpha is not None:
        arrays |= {"aggregated": payload.aggregated, "log-alpha": payload.log_alpha}
        form = "dense"
    meta = ConfigRecord(
        {"round": round_id, "partner-ids": [int(p) for p in payload.partner_ids], "form": form}
    )
    if payload.teacher is not None:
        arrays["teacher"] = payload.teacher
        if payload.teacher_kind == "presence":
            meta["teacher-kind"] = "presence"
    return RecordDict(
        {
            PAYLOAD_KEY: ArrayRecord(
                {k: Array(v.detach().cpu().numpy()) for k, v in arrays.items()}
            ),
            f"{PAYLOAD_KEY}.meta": meta,
        }
    )


def has_payload(content: RecordDict) -> bool:
    """Whether a message carries a Muscle payload (round 1 and lone users get none)."""
    return PAYLOAD_KEY in content.array_records


def payload_from_records(
    content: RecordDict,
    *,
    round_id: int,
    rows: int,
    dim: int,
    max_bytes: int = GRPC_MAX_MESSAGE_BYTES,
) -> UserPayload:
    """Read and validate a payload on the client; tensors come back as float32.

    Raises
    ------
    WireError
        On a stale round, inconsistent partner count, wrong shapes, non-finite values,
        non-unit partner rows, a teacher whose rows are not probabilities, or arrays over
        ``max_bytes``.
    """
    meta = _config(content, f"{PAYLOAD_KEY}.meta", None)
    check_round(meta.get("round"), round_id, f"{PAYLOAD_KEY}.meta", None)
    partners = meta.get("partner-ids")
    if not isinstance(partners, list) or not partners or len(set(partners)) != len(partners):
        raise WireError(
            f"partner-ids must be a non-empty list of distinct ids, got {partners!r}",
            field=f"{PAYLOAD_KEY}.meta",
        )
    num = len(partners)
    others = _array(content, PAYLOAD_KEY, "others", None, max_bytes)
    if others.shape != (num, rows, dim):
        raise WireError(
            f"shape {others.shape}, expected {(num, rows, dim)}", field=f"{PAYLOAD_KEY}/others"
        )
    form = meta.get("form")
    if form not in ("factored", "dense", "partners"):
        raise WireError(
            f"form must be 'factored', 'dense' or 'partners', got {form!r}",
            field=f"{PAYLOAD_KEY}.meta",
        )
    expected_pairs = (math.comb(num, 2), rows, rows)
    if form == "partners":
        pairs = np.zeros(expected_pairs, dtype=np.float32)
    else:
        pairs = _array(content, PAYLOAD_KEY, "log-alpha-pairs", None, max_bytes)
    if pairs.shape != expected_pairs:
        raise WireError(
            f"shape {pairs.shape}, expected {expected_pairs}",
            field=f"{PAYLOAD_KEY}/log-alpha-pairs",
        )
    aggregated = log_alpha = None
    if form == "dense":
        aggregated = finite(
            _array(content, PAYLOAD_KEY, "aggregated", None, max_bytes), f"{PAYLOAD_KEY}/aggregated"
        )
        log_alpha = finite(
            _array(content, PAYLOAD_KEY, "log-alpha", None, max_bytes), f"{PAYLOAD_KEY}/log-alpha"
        )
        if aggregated.shape != (rows**num, dim) or log_alpha.shape != (rows**num,):
            raise WireError(
                f"dense shapes {tuple(aggregated.shape)} and {tuple(log_alpha.shape)}, expected "
                f"{(rows**num, dim)} and {(rows**num,)}",
                field=f"{PAYLOAD_KEY}/aggregated",
            )
    teacher, teacher_kind = None, meta.get("teacher-kind", "classes")
    if teacher_kind not in ("classes", "presence"):
        raise WireError(
            f"teacher-kind must be 'classes' or 'presence', got {teacher_kind!r}",
            field=f"{PAYLOAD_KEY}.meta",
        )
    if "teacher" in content.array_records[PAYLOAD_KEY]:
        field = f"{PAYLOAD_KEY}/teacher"
        array = _array(content, PAYLOAD_KEY, "teacher", None, max_bytes)
        read = presence_rows if teacher_kind == "presence" else probability_rows
        teacher = read(array, field, None)
        if teacher.shape[0] != rows:
            raise WireError(f"shape {array.shape}, expected ({rows}, K)", field=field)
    return UserPayload(
        partner_ids=tuple(int(p) for p in partners),
        others=finite_unit_rows(others, f"{PAYLOAD_KEY}/others", None),
        log_alpha_pairs=finite(pairs, f"{PAYLOAD_KEY}/log-alpha-pairs"),
        aggregated=aggregated,
        log_alpha=log_alpha,
        teacher=teacher,
        teacher_kind=str(teacher_kind),
    )


# ----------------------------------------------------------------- round messages


@dataclass(frozen=True)
class Instruction:
    """What a client is asked to do in one round."""

    round_id: int
    contrast_indices: tuple[int, ...] | None
    next_indices: tuple[int, ...] | None
    payload: UserPayload | None
    experiment: str = ""  # the run's identity, which keys each user's saved state


def instruction_to_records(
    *,
    round_id: int,
    contrast_indices: Sequence[int] | None,
    next_indices: Sequence[int] | None,
    payload: RecordDict | None = None,
    experiment: str = "",
) -> RecordDict:
    """The round's instruction, with the payload's records (from :func:`payload_to_records`)."""
    content = RecordDict() if payload is None else payload
    fields: dict[str, str | int | list[int]] = {"round": round_id, "experiment": experiment}
    if contrast_indices is not None:
        fields["contrast-indices"] = [int(i) for i in contrast_indices]
    if next_indices is not None:
        fields["next-indices"] = [int(i) for i in next_indices]
    content["instruction"] = ConfigRecord(fields)  # type: ignore[arg-type]
    return content


def instruction_from_records(content: RecordDict, *, public_size: int, dim: int) -> Instruction:
    """Read and validate the round's instruction on the client."""
    meta = _config(content, "instruction", None)
    round_id = meta.get("round")
    if not isinstance(round_id, int) or isinstance(round_id, bool) or round_id < 1:
        raise WireError(f"round must be a positive integer, got {round_id!r}", field="instruction")
    contrast = check_indices(meta.get("contrast-indices"), "contrast-indices", public_size)
    following = check_indices(meta.get("next-indices"), "next-indices", public_size)
    payload = None
    if has_payload(content):
        if contrast is None:
            raise WireError("a payload came without contrast-indices", field="instruction")
        payload = payload_from_records(content, round_id=round_id, rows=len(contrast), dim=dim)
    experiment = meta.get("experiment", "")
    if not isinstance(experiment, str):
        raise WireError(f"experiment must be a string, got {experiment!r}", field="instruction")
    return Instruction(round_id, contrast, following, payload, experiment)


def reply_to_records(
    *,
    metrics: Mapping[str, float],
    user: Mapping[str, str],
    representation: RecordDict | None = None,
) -> RecordDict:
    """A client's reply: metrics, who it is, and Z for the next round when asked for."""
    content = RecordDict() if representation is None else representation
    content["metrics"] = MetricRecord({k: float(v) for k, v in metrics.items()})
    content["user"] = ConfigRecord(dict(user))
    return content


def failure_to_records(*, user_id: str, reason: str) -> RecordDict:
    """A client's reply when its round failed: who it is and why."""
    return RecordDict({"failure": ConfigRecord({"user-id": user_id, "reason": reason})})


def reply_failure(content: RecordDict, sender: int) -> tuple[str, str] | None:
    """``(user id, reason)`` of a failure reply, or None for a normal reply."""
    record = content.config_records.get("failure")
    if record is None:
        return None
    user_id, reason = record.get("user-id"), record.get("reason")
    if not isinstance(user_id, str) or not isinstance(reason, str):
        raise WireError(
            f"needs string user-id and reason, got {dict(record)!r}", field="failure", sender=sender
        )
    return user_id, reason


def reply_user(content: RecordDict, sender: int) -> dict[str, str]:
    """The ``user`` record of a reply (user-id, model, task, metric), validated."""
    return non_empty_strings(_config(content, "user", sender), USER_FIELDS, "user", sender)


def reply_metrics(content: RecordDict, sender: int) -> dict[str, float]:
    """The ``metrics`` record of a reply as floats, refusing NaN and inf."""
    record = content.metric_records.get("metrics")
    if record is None:
        raise WireError("missing", field="metrics", sender=sender)
    return finite_metrics(record.items(), sender)


# ----------------------------------------------------------------- helpers


def _config(content: RecordDict, key: str, sender: int | None) -> ConfigRecord:
    record = content.config_records.get(key)
    if record is None:
        raise WireError(
            "missing; the peer may run another version of the app", field=key, sender=sender
        )
    return record


def _array(
    content: RecordDict, record_key: str, name: str, sender: int | None, max_bytes: int
) -> np.ndarray:
    """Decode one array with size, serialisation, dtype and metadata checks."""
    field = f"{record_key}/{name}"
    record = content.array_records.get(record_key)
    if record is None or name not in record:
        raise WireError("missing", field=field, sender=sender)
    array = record[name]
    check_size(len(array.data), max_bytes, field, sender)
    try:
        decoded = array.numpy()  # np.load(allow_pickle=False): pickles are refused
    except (TypeError, ValueError, OSError, EOFError) as err:
        raise WireError(f"cannot decode ({err})", field=field, sender=sender) from err
    return check_decoded(decoded, array.dtype, array.shape, field, sender)
