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
    payload_from_records,
    payload_to_records,
    record_nbytes,
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
