"""Wire records: round trips and every validation case on arrival."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedmuscle_flwr.aggregation import build_payloads
from fedmuscle_flwr.wire import (
    GRPC_MAX_MESSAGE_BYTES,
    WireError,
    batch_digest,
    has_payload,
    instruction_from_records,
    instruction_to_records,
    payload_from_records,
    payload_to_records,
    record_nbytes,
    reply_metrics,
    reply_to_records,
    representation_from_records,
    representation_to_records,
)

B, D = 6, 8
DIGEST = batch_digest(range(B))


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def read(content: RecordDict, **overrides):
    kwargs = {"round_id": 3, "rows": B, "dim": D, "digest": DIGEST, "sender": 17} | overrides
    return representation_from_records(content, **kwargs)


def with_array(array: Array) -> RecordDict:
    content = representation_to_records(unit(B, D), round_id=3, digest=DIGEST)
    content["representation"] = ArrayRecord({"z": array})
    return content


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_representation_round_trip_and_byte_count():
    z = unit(B, D)
    content = representation_to_records(z, round_id=3, digest=DIGEST)
    assert torch.allclose(read(content), z, atol=1e-6)
    assert record_nbytes(content) == len(npy_bytes(z.numpy()))


def test_bfloat16_and_float16_are_accepted():
    z = unit(B, D)
    assert torch.allclose(
        read(representation_to_records(z.bfloat16(), round_id=3, digest=DIGEST)), z, atol=2e-2
    )
    assert torch.allclose(
        read(representation_to_records(z.half(), round_id=3, digest=DIGEST)), z, atol=2e-3
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda z: z.masked_fill(torch.eye(B, D, dtype=torch.bool), float("nan")), "NaN or inf"),
        (lambda z: z.masked_fill(torch.eye(B, D, dtype=torch.bool), float("inf")), "NaN or inf"),
        (lambda z: 3 * z, "L2-normalised"),
        (lambda z: torch.zeros_like(z), "L2-normalised"),
        (lambda z: z[:, :-1], r"shape \(6, 7\), expected \(6, 8\)"),
        (lambda z: z[:-1], r"shape \(5, 8\), expected \(6, 8\)"),
    ],
)
def test_bad_representation_values_are_refused(make, match):
    content = representation_to_records(make(unit(B, D)), round_id=3, digest=DIGEST)
    with pytest.raises(WireError, match=match) as info:
        read(content)
    assert info.value.sender == 17 and "from node 17" in str(info.value)


def test_wrong_rank_is_refused():
    with pytest.raises(WireError, match=r"shape \(48,\), expected"):
        read(with_array(Array(unit(B, D).reshape(-1).numpy())))


def test_wrong_dtype_is_refused():
    ints = np.ones((B, D), dtype=np.int64)
    with pytest.raises(WireError, match="dtype int64"):
        read(with_array(Array(ints)))


def test_metadata_disagreeing_with_data_is_refused():
    data = npy_bytes(unit(B, D).numpy())
    with pytest.raises(
        WireError, match=r"metadata says float64\[6, 8\] but the data is float32\[6, 8\]"
    ):
        read(with_array(Array(dtype="float64", shape=(B, D), stype="numpy.ndarray", data=data)))
    content = representation_to_records(unit(B, D), round_id=3, digest=DIGEST)
    content["representation.meta"]["rows"] = 5
    with pytest.raises(WireError, match=r"metadata says \(rows, dim\) = \(5, 8\)"):
        read(content)


def test_pickled_npy_and_unknown_serialisation_are_refused():
    payload = np.array([{"evil": 1}], dtype=object)
    array = Array(
        dtype="object",
        shape=(1,),
        stype="numpy.ndarray",
        data=npy_bytes(payload, allow_pickle=True),
    )
    with pytest.raises(WireError, match="cannot decode"):
        read(with_array(array))
    raw = Array(
        dtype="float32", shape=(B, D), stype="pickle", data=pickle.dumps(unit(B, D).numpy())
    )
    with pytest.raises(WireError, match="cannot decode"):
        read(with_array(raw))
    garbage = Array(dtype="float32", shape=(B, D), stype="numpy.ndarray", data=b"\x93NUMPY garbage")
    with pytest.raises(WireError, match="cannot decode"):
        read(with_array(garbage))


def test_oversized_arrays_are_refused_before_decoding():
    content = representation_to_records(unit(B, D), round_id=3, digest=DIGEST)
    with pytest.raises(WireError, match="over the limit of 100"):
        read(content, max_bytes=100)


def test_stale_round_batch_digest_and_missing_records_are_refused():
    content = representation_to_records(unit(B, D), round_id=2, digest=DIGEST)
    with pytest.raises(WireError, match="stale round 2, expected 3"):
        read(content)
    content = representation_to_records(unit(B, D), round_id=3, digest=batch_digest([9, 9]))
    with pytest.raises(WireError, match="another public batch"):
        read(content)
    with pytest.raises(WireError, match=r"representation.meta.*missing"):
        read(RecordDict())
    content = representation_to_records(unit(B, D), round_id=3, digest=DIGEST)
    del content["representation"]
    with pytest.raises(WireError, match=r"representation/z.*missing"):
        read(content)


def payloads(dense: bool = False):
    reps = {n: unit(B, D, seed=n) for n in (4, 5, 6, 7)}
    return build_payloads(
        reps, num_partners=2, tau_alpha=0.5, generator=torch.Generator().manual_seed(0), dense=dense
    )


@pytest.mark.parametrize("dense", [False, True])
def test_payload_round_trip(dense):
    for payload in payloads(dense).values():
        content = payload_to_records(payload, round_id=5)
        assert has_payload(content)
        got = payload_from_records(content, round_id=5, rows=B, dim=D)
        assert got.partner_ids == payload.partner_ids
        assert torch.allclose(got.others, payload.others, atol=1e-6)
        assert torch.equal(got.log_alpha_pairs, payload.log_alpha_pairs)
        assert got.is_dense == dense
        if dense:
            assert torch.equal(got.aggregated, payload.aggregated)
            assert torch.equal(got.log_alpha, payload.log_alpha)
    assert not has_payload(RecordDict())


def test_bad_payloads_are_refused():
    payload = next(iter(payloads().values()))
    content = payload_to_records(payload, round_id=5)
    with pytest.raises(WireError, match="stale round 5, expected 6"):
        payload_from_records(content, round_id=6, rows=B, dim=D)
    with pytest.raises(WireError, match=r"shape \(2, 6, 8\), expected \(2, 7, 8\)"):
        payload_from_records(content, round_id=5, rows=7, dim=D)
    bad = payload_to_records(payload, round_id=5)
    bad["muscle.meta"]["partner-ids"] = [1, 1]
    with pytest.raises(WireError, match="distinct ids"):
        payload_from_records(bad, round_id=5, rows=B, dim=D)
    bad = payload_to_records(payload, round_id=5)
    pairs = payload.log_alpha_pairs.clone()
    pairs[0, 0, 0] = float("nan")
    bad["muscle"]["log-alpha-pairs"] = Array(pairs.numpy())
    with pytest.raises(WireError, match="log-alpha-pairs: holds NaN"):
        payload_from_records(bad, round_id=5, rows=B, dim=D)
    bad = payload_to_records(payload, round_id=5)
    bad["muscle"]["others"] = Array((2 * payload.others).numpy())
    with pytest.raises(WireError, match="L2-normalised"):
        payload_from_records(bad, round_id=5, rows=B, dim=D)
    bad = payload_to_records(payload, round_id=5)
    bad["muscle.meta"]["form"] = "sparse"
    with pytest.raises(WireError, match="form must be"):
        payload_from_records(bad, round_id=5, rows=B, dim=D)
    with pytest.raises(WireError, match="over the limit"):
        payload_from_records(content, round_id=5, rows=B, dim=D, max_bytes=64)


def instruction(**fields) -> RecordDict:
    """An instruction record whose fields are ``fields`` over a valid round-5 one."""
    content = instruction_to_records(
        round_id=5, contrast_indices=range(B), next_indices=[7, 8], experiment="x"
    )
    for key, value in fields.items():
        if value is None:
            del content["instruction"][key]
        else:
            content["instruction"][key] = value
    return content


def test_instruction_round_trip_with_payload():
    payload = next(iter(payloads().values()))
    content = instruction_to_records(
        round_id=5,
        contrast_indices=range(B),
        next_indices=[7, 8, 9],
        payload=payload_to_records(payload, round_id=5),
        experiment="exp-1",
    )
    got = instruction_from_records(content, public_size=10, dim=D)
    assert (got.round_id, got.contrast_indices, got.next_indices) == (5, tuple(range(B)), (7, 8, 9))
    assert got.experiment == "exp-1" and got.payload.partner_ids == payload.partner_ids


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"round": 0}, "round must be a positive integer, got 0"),
        ({"round": -2}, "round must be a positive integer, got -2"),
        ({"round": "5"}, "round must be a positive integer, got '5'"),
        ({"round": 5.0}, "round must be a positive integer, got 5.0"),
        ({"round": True}, "round must be a positive integer, got True"),
        ({"round": None}, "round must be a positive integer, got None"),
        ({"next-indices": [7, 10]}, r"next-indices must list at least 2 indices in \[0, 10\)"),
        ({"next-indices": [-1, 3]}, r"next-indices must list at least 2 indices in \[0, 10\)"),
        ({"next-indices": [3]}, r"next-indices must list at least 2 .*got \[3\]"),
        ({"next-indices": [1.0, 2.0]}, r"next-indices must list .*got \[1.0, 2.0\]"),
        ({"next-indices": [True, False]}, r"next-indices must list .*got \[True, False\]"),
        ({"contrast-indices": [0, 99]}, r"contrast-indices must list .*got \[0, 99\]"),
        ({"contrast-indices": [4]}, r"contrast-indices must list .*got \[4\]"),
        ({"experiment": 3}, "experiment must be a string, got 3"),
    ],
)
def test_bad_instructions_are_refused_by_the_client(fields, match):
    with pytest.raises(WireError, match=match) as info:
        instruction_from_records(instruction(**fields), public_size=10, dim=D)
    assert info.value.field == "instruction"


def test_a_payload_without_contrast_indices_or_of_another_size_is_refused():
    payload = next(iter(payloads().values()))
    bare = instruction_to_records(
        round_id=5,
        contrast_indices=None,
        next_indices=None,
        payload=payload_to_records(payload, round_id=5),
    )
    with pytest.raises(WireError, match="a payload came without contrast-indices"):
        instruction_from_records(bare, public_size=10, dim=D)
    fewer = instruction_to_records(
        round_id=5,
        contrast_indices=range(B - 1),
        next_indices=None,
        payload=payload_to_records(payload, round_id=5),
    )
    with pytest.raises(WireError, match=r"shape \(2, 6, 8\), expected \(2, 5, 8\)"):
        instruction_from_records(fewer, public_size=10, dim=D)
    stale = instruction_to_records(
        round_id=6,
        contrast_indices=range(B),
        next_indices=None,
        payload=payload_to_records(payload, round_id=5),
    )
    with pytest.raises(WireError, match="stale round 5, expected 6"):
        instruction_from_records(stale, public_size=10, dim=D)
    with pytest.raises(WireError, match="invalid instruction: missing"):
        instruction_from_records(RecordDict(), public_size=10, dim=D)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_metrics_are_refused_naming_metric_and_sender(bad):
    user = {"user-id": "u", "model": "m", "task": "t", "metric": "accuracy"}
    content = reply_to_records(metrics={"accuracy": 0.5, "train-loss": bad}, user=user)
    with pytest.raises(WireError, match=f"train-loss = {bad!r} is not a finite number") as info:
        reply_metrics(content, sender=9)
    assert info.value.sender == 9 and info.value.field == "metrics"
    good = reply_to_records(metrics={"accuracy": 0.5, "train-loss": 1.0}, user=user)
    assert reply_metrics(good, sender=9) == {"accuracy": 0.5, "train-loss": 1.0}
    del good["metrics"]
    with pytest.raises(WireError, match="invalid metrics from node 9: missing"):
        reply_metrics(good, sender=9)


def test_wire_error_is_a_value_error_naming_field_and_sender():
    err = WireError("holds NaN", field="representation/z", sender=3)
    assert isinstance(err, ValueError)
    assert str(err) == "invalid representation/z from node 3: holds NaN"


def test_byte_limit_matches_flower_grpc_limit():
    from flwr.supercore.grpc import GRPC_MAX_MESSAGE_LENGTH

    assert GRPC_MAX_MESSAGE_BYTES == GRPC_MAX_MESSAGE_LENGTH


def test_config_record_round_trips_partner_ids():
    record = ConfigRecord({"partner-ids": [3, 4]})
    assert record["partner-ids"] == [3, 4]
