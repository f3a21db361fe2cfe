"""FedMuscle Strategy logic with constructed replies, without a simulation."""

from __future__ import annotations

import itertools
import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict

from fedmuscle_flwr import wire
from fedmuscle_flwr.aggregation import build_payloads
from fedmuscle_flwr.config import RunConfig
from server_app import strategy as strategy_module
from server_app.strategy import FedMuscleStrategy
from tests.clock import FakeClock

pytestmark = pytest.mark.usefixtures("flower_task_identity")
DIM = 8
_ids = itertools.count()


class FakeGrid:
    """Just enough of a Grid for configure_train: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def config(**overrides) -> RunConfig:
    values = {
        "num_server_rounds": 3,
        "num_partners": 2,
        "public_batch_size": 4,
        "public_size": 50,
        "node_wait_timeout": 0.1,
        "quorum": 2,
        "embed_dim": DIM,
    } | overrides
    return RunConfig(**values)


def send(strategy: FedMuscleStrategy, server_round: int, grid: FakeGrid) -> dict[int, Message]:
    """configure_train, then give each message an id as a Grid's push would."""
    messages = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
    for msg in messages:
        msg.metadata.__dict__["_message_id"] = f"m{next(_ids)}"
    return {msg.metadata.dst_node_id: msg for msg in messages}


def representation(node: int, server_round: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * node + server_round)
    return F.normalize(torch.randn(rows, DIM, generator=g), dim=-1)


def reply(
    msg: Message,
    *,
    z: torch.Tensor | None = None,
    round_shift: int = 1,
    user: int | None = None,
    metrics: dict[str, float] | None = None,
) -> Message:
    """What a well-behaved client answers; ``z`` overrides its representation, ``user`` the
    user it serves (default: ``user-<node id>``), whose representation it sends, ``metrics``
    the metrics it reports."""
    instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
    node = msg.metadata.dst_node_id if user is None else user
    records = None
    if instruction.next_indices is not None:
        z = (
            representation(node, instruction.round_id, len(instruction.next_indices))
            if z is None
            else z
        )
        records = wire.representation_to_records(
            z,
            round_id=instruction.round_id + round_shift,
            digest=wire.batch_digest(instruction.next_indices),
        )
    content = wire.reply_to_records(
        metrics={"accuracy": 0.5 + node / 100, "train-loss": 1.0} if metrics is None else metrics,
        user={
            "user-id": f"user-{node}",
            "model": "small-cnn",
            "task": "image-classification",
            "metric": "accuracy",
        },
        representation=records,
    )
    return Message(content, reply_to=msg)


def test_one_exchange_per_round_carries_payload_and_next_batch():
    strategy = FedMuscleStrategy(config(), device="cpu")
    grid = FakeGrid([11, 12, 13, 14])
    first = send(strategy, 1, grid)
    assert sorted(first) == [11, 12, 13, 14]
    for msg in first.values():
        instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
        assert instruction.payload is None and instruction.contrast_indices is None
        assert instruction.next_indices is not None and len(set(instruction.next_indices)) == 4
    strategy.aggregate_train(1, [reply(m) for m in first.values()])
    second = send(strategy, 2, grid)
    batch2 = wire.instruction_from_records(first[11].content, public_size=50, dim=DIM).next_indices
    expected = build_payloads(
        {n: representation(n, 1, 4) for n in first},
        num_partners=2,
        tau_alpha=0.1,
        generator=torch.Generator().manual_seed(1),
        device="cpu",
        selection=strategy.config.partner_selection,
        exploration=strategy.config.partner_exploration,
    )
    for node, msg in second.items():
        instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
        assert instruction.contrast_indices == batch2
        assert instruction.payload.partner_ids == expected[node].partner_ids
        assert torch.allclose(instruction.payload.others, expected[node].others, atol=1e-6)
        assert torch.allclose(
            instruction.payload.log_alpha_pairs, expected[node].log_alpha_pairs, atol=1e-5
        )
    strategy.aggregate_train(2, [reply(m) for m in second.values()])
    last = send(strategy, 3, grid)
    assert all(
        wire.instruction_from_records(m.content, public_size=50, dim=DIM).next_indices is None
        for m in last.values()
    )
    strategy.aggregate_train(3, [reply(m) for m in last.values()])
    results = strategy.results
    assert [r.round for r in results.rounds] == [1, 2, 3]
    assert results.final["user-11"]["accuracy"] == pytest.approx(0.61)
    assert all(r.failed == {} for r in results.rounds)
    round2 = results.rounds[1]
    assert round2.downlink_bytes["user-11"] == wire.record_nbytes(second[11].content)
    assert round2.downlink_bytes["user-11"] > 2 * 4 * DIM * 4  # two partners' rows at least
    assert round2.uplink_bytes["user-11"] > 4 * DIM * 4


def test_bad_replies_leave_only_their_sender_out():
    strategy = FedMuscleStrategy(config(num_partners=3), device="cpu")
    grid = FakeGrid([1, 2, 3, 4, 5, 6, 7])
    sent = send(strategy, 1, grid)
    nan_z = representation(3, 1, 4).masked_fill(torch.eye(4, DIM, dtype=torch.bool), float("nan"))
    replies = [
        reply(sent[1]),
        Message(
            Error(code=2, reason="Traceback ...\nRuntimeError: CUDA out of memory"),
            reply_to=sent[2],
        ),
        reply(sent[3], z=nan_z),
        reply(sent[4], round_shift=0),  # stale: Z labelled with the wrong round
        reply(sent[5]),
        reply(sent[5]),  # duplicate
        # node 6 never answers
        reply(sent[7], metrics={"accuracy": float("inf"), "train-loss": 1.0}),
    ]
    strategy.aggregate_train(1, replies)
    record = strategy.results.rounds[0]
    assert sorted(record.replied) == ["user-1", "user-5"]
    assert "CUDA out of memory" in record.failed["node-2"]
    assert "NaN" in record.failed["user-3"]
    assert "stale round" in record.failed["user-4"]
    assert record.failed["node-6"] == "no reply before the timeout"
    assert "accuracy = inf is not a finite number" in record.failed["user-7"]
    nxt = send(strategy, 2, grid)
    with_payload = {n for n, m in nxt.items() if wire.has_payload(m.content)}
    assert with_payload == {1, 5}
    payload = wire.instruction_from_records(nxt[1].content, public_size=50, dim=DIM).payload
    assert payload.partner_ids == (5,)  # M_eff = min(3, 2 - 1)


def test_below_quorum_no_payloads_and_the_run_goes_on():
    strategy = FedMuscleStrategy(config(quorum=3), device="cpu")
    grid = FakeGrid([1, 2, 3])
    sent = send(strategy, 1, grid)
    strategy.aggregate_train(1, [reply(sent[1]), reply(sent[2])])
    nxt = send(strategy, 2, grid)
    assert len(nxt) == 3 and not any(wire.has_payload(m.content) for m in nxt.values())


def test_local_algorithm_asks_for_no_representations():
    strategy = FedMuscleStrategy(config(algorithm="local"), device="cpu")
    grid = FakeGrid([1, 2])
    for rnd in (1, 2):
        sent = send(strategy, rnd, grid)
        for msg in sent.values():
            instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
            assert instruction.next_indices is None and instruction.payload is None
        strategy.aggregate_train(rnd, [reply(m) for m in sent.values()])
    assert strategy.results.rounds[1].uplink_bytes["user-1"] == 0


def test_pairwise_sends_partners_without_alpha_and_dense_sends_dense():
    for algorithm, payload, form in [
        ("pairwise", "factored", "partners"),
        ("muscle", "dense", "dense"),
    ]:
        strategy = FedMuscleStrategy(config(algorithm=algorithm, payload=payload), device="cpu")
        grid = FakeGrid([1, 2, 3])
        sent = send(strategy, 1, grid)
        strategy.aggregate_train(1, [reply(m) for m in sent.values()])
        msg = send(strategy, 2, grid)[1]
        assert msg.content.config_records["muscle.meta"]["form"] == form
        keys = set(msg.content.array_records["muscle"].keys())
        assert keys == (
            {"others"}
            if form == "partners"
            else {"others", "log-alpha-pairs", "aggregated", "log-alpha"}
        )


def test_public_batches_are_seeded():
    a = FedMuscleStrategy(config(seed=7), device="cpu")
    b = FedMuscleStrategy(config(seed=7), device="cpu")
    c = FedMuscleStrategy(config(seed=8), device="cpu")
    draws = [a._draw_public_batch() for _ in range(2)]
    assert draws == [b._draw_public_batch() for _ in range(2)]
    assert draws[0] != draws[1]
    assert draws[0] != c._draw_public_batch()


class LateGrid(FakeGrid):
    """Node ids that connect over time: each look sees the next list, then the last."""

    def __init__(self, looks: list[list[int]]) -> None:
        super().__init__(looks[-1])
        self.looks = list(looks)

    def get_node_ids(self):
        return list(self.looks.pop(0) if len(self.looks) > 1 else self.looks[0])


def test_node_wait_sleeps_no_longer_than_its_timeout(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(strategy_module, "time", clock)
    strategy = FedMuscleStrategy(config(min_nodes=2, node_wait_timeout=0.1), device="cpu")
    lonely = send(strategy, 1, FakeGrid([9]))
    assert list(lonely) == [9]  # it goes on with the nodes it has
    assert clock.now == pytest.approx(0.1) and clock.sleeps == [pytest.approx(0.1)]


def test_node_wait_ends_once_min_nodes_have_connected(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(strategy_module, "time", clock)
    strategy = FedMuscleStrategy(config(min_nodes=3, node_wait_timeout=600), device="cpu")
    sent = send(strategy, 1, LateGrid([[4], [4, 5], [4, 5, 6], [4, 5, 6, 7]]))
    assert sorted(sent) == [4, 5, 6]
    assert clock.sleeps == [strategy_module.NODE_POLL_SECONDS] * 2


def test_fraction_train_samples_a_seeded_subset_each_round():
    def subsets(seed: int) -> list[list[int]]:
        strategy = FedMuscleStrategy(
            config(fraction_train=0.5, min_nodes=2, seed=seed), device="cpu"
        )
        grid, picked = FakeGrid(range(1, 9)), []
        for rnd in (1, 2, 3):
            sent = send(strategy, rnd, grid)
            strategy.aggregate_train(rnd, [reply(m) for m in sent.values()])
            picked.append(sorted(sent))
        return picked

    picked = subsets(seed=0)
    assert all(len(p) == 4 and set(p) < set(range(1, 9)) for p in picked)
    assert len({tuple(p) for p in picked}) > 1  # drawn again each round
    assert subsets(seed=0) == picked
    assert subsets(seed=1) != picked


def test_progress_line_reports_replies_metrics_and_bytes(capsys, monkeypatch):
    root = logging.getLogger()  # logging configured elsewhere must not repeat the line
    monkeypatch.setattr(root, "handlers", [logging.StreamHandler(sys.stdout)])
    level = root.level
    root.setLevel(logging.INFO)
    try:
        strategy = FedMuscleStrategy(config(), device="cpu")
        sent = send(strategy, 1, FakeGrid([1, 2]))
        strategy.aggregate_train(1, [reply(m) for m in sent.values()])
    finally:
        root.setLevel(level)
    out = capsys.readouterr().out
    assert out.count("round 1/3: 2/2 users replied") == 1
    assert "image-classification accuracy 0.515" in out
    assert "up " in out and "down " in out and "server " in out


def test_unknown_user_record_is_refused():
    strategy = FedMuscleStrategy(config(), device="cpu")
    sent = send(strategy, 1, FakeGrid([1, 2]))
    bad = reply(sent[1])
    bad.content["user"] = ConfigRecord({"user-id": ""})
    strategy.aggregate_train(1, [bad, reply(sent[2])])
    record = strategy.results.rounds[0]
    assert "invalid user from node 1" in record.failed["node-1"]
    assert record.replied == ["user-2"] and "node-1" not in record.metrics


def test_payloads_depend_on_the_users_not_on_the_node_ids_they_were_given():
    """Same seed, same run: another launch hands out other node ids (and another order)."""

    def partners_by_user(nodes_of_users: dict[int, int]) -> dict[int, tuple[int, ...]]:
        strategy = FedMuscleStrategy(config(partner_selection="random"), device="cpu")
        grid = FakeGrid(nodes_of_users.values())
        user_of = {node: user for user, node in nodes_of_users.items()}
        first = send(strategy, 1, grid)
        strategy.aggregate_train(1, [reply(m, user=user_of[n]) for n, m in first.items()])
        second = send(strategy, 2, grid)
        payloads = {
            user_of[n]: wire.instruction_from_records(m.content, public_size=50, dim=DIM).payload
            for n, m in second.items()
        }
        return {
            user: tuple(user_of[p] for p in payload.partner_ids) + tuple(payload.others.flatten())
            for user, payload in payloads.items()
        }

    users = range(1, 6)
    assert partners_by_user({u: 10 + u for u in users}) == partners_by_user(
        {u: 100 - 7 * u for u in users}  # other ids, in the reverse order
    )


def test_resumed_payloads_name_partners_without_a_node_by_distinct_wire_ids():
    from server_app.checkpoint import payloads_by_node

    saved = {
        user: {"partners": partners, "others": None, "log_alpha_pairs": None,
               "aggregated": None, "log_alpha": None}
        for user, partners in {"a": ["b", "c", "d"], "b": ["a", "c"], "gone": ["a"]}.items()
    }  # fmt: skip
    node_of = {"a": 2**64 - 5, "b": 2**63 + 7}  # Flower's node ids are random uint64
    payloads, absent = payloads_by_node(saved, node_of)
    assert set(payloads) == set(node_of.values())  # a user with no node gets nothing
    ids = payloads[node_of["a"]].partner_ids
    assert ids[0] == node_of["b"] and len(set(ids)) == 3 and min(ids) >= 0
    assert {absent[i] for i in ids[1:]} == {"c", "d"}  # c and d have no node: placeholders
    assert payloads[node_of["b"]].partner_ids[1] == ids[1]  # the same placeholder for c
    # They go on the wire: a list mixing uint64 node ids and placeholders serialises.
    meta = ConfigRecord({"partner-ids": list(ids)})
    assert RecordDict({"m": meta}).object_id
