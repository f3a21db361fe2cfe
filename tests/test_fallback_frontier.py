"""benchmarks/fallback_frontier.py: the fallback's decision replayed on recorded runs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr.results import RoundRecord, RunResults, UserInfo

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "fallback_frontier.py"
FRONTIER = runpy.run_path(str(SCRIPT))
USERS = {
    "a": UserInfo("a", "small-cnn", "image-classification", "accuracy"),
    "b": UserInfo("b", "segformer", "semantic-segmentation", "miou"),
}


def _local(values: dict[str, list[float]], seed: int = 0, **config) -> RunResults:
    rounds = len(next(iter(values.values())))
    records = [
        RoundRecord(r + 1, metrics={u: {USERS[u].metric: v[r]} for u, v in values.items()})
        for r in range(rounds)
    ]
    config = {"algorithm": "local", "seed": seed, "num-server-rounds": rounds, **config}
    return RunResults(config=config, users=USERS, rounds=records)


def _joined(
    local: RunResults,
    joined: dict[str, list[float]],
    shares: dict[str, list[tuple[float, float]]],
    threshold: float = 0.8,
    **config,
) -> RunResults:
    """A muscle run that reported its joined model where the pooled share >= threshold."""
    records = []
    for r, local_record in enumerate(local.rounds):
        metrics = {}
        for user, values in joined.items():
            metric = USERS[user].metric
            share, last = shares[user][r]
            lone = share < threshold
            metrics[user] = {
                metric: local_record.metrics[user][metric] if lone else values[r],
                f"joined-{metric}": values[r],
                "fallback-joined-share": share,
                "fallback-last-share": last,
                "fallback-local": float(lone),
            }
        records.append(RoundRecord(r + 1, metrics=metrics))
    config = {**local.config, "algorithm": "muscle", "contrastive-weight": 0.03, **config}
    return RunResults(config=config, users=USERS, rounds=records)


def _pair(local, run):
    return FRONTIER["Pair"](run, local)


def test_thresholds_keep_the_joined_model_only_where_both_shares_reach_them():
    local = _local({"a": [0.5], "b": [0.4]})
    run = _joined(local, {"a": [0.6], "b": [0.3]}, {"a": [(0.9, 0.4)], "b": [(0.7, 0.9)]})
    pairs = [_pair(local, run)]
    replay = FRONTIER["replay"]
    both = replay(pairs, 1, "thresholds", 0.7, 0.0)  # a keeps +20 %, b keeps -25 %
    assert both.improved == 0.5
    assert both.delta == pytest.approx((20.0 - 25.0) / 2)
    assert both.worst == both.lowest == pytest.approx(-25.0)
    last = replay(pairs, 1, "thresholds", 0.7, 0.5)  # a's this-round share 0.4: lone
    assert last.improved == 0.0 and last.worst == pytest.approx(-25.0)
    strict = replay(pairs, 1, "thresholds", 0.95, 0.0)  # nobody keeps: both at local
    assert strict.improved == 0.0 and strict.delta == 0.0 and strict.worst == 0.0
    oracle = replay(pairs, 1, "oracle")  # joined exactly where it beats local: a only
    assert oracle.improved == 0.5 and oracle.worst == 0.0 and oracle.delta == pytest.approx(10)
    joined = replay(pairs, 1, "joined")
    assert joined == both


def test_a_round_is_replayed_from_that_rounds_records_and_means_are_over_runs():
    local = _local({"a": [0.5, 0.5], "b": [0.5, 0.5]})
    run = _joined(local, {"a": [0.4, 0.6], "b": [0.6, 0.6]}, {u: [(1.0, 1.0)] * 2 for u in "ab"})
    local_2 = _local({"a": [0.5, 0.5], "b": [0.5, 0.5]}, seed=1)
    run_2 = _joined(
        local_2, {"a": [0.5, 0.5], "b": [0.5, 0.5]}, {u: [(1.0, 1.0)] * 2 for u in "ab"}
    )
    pairs = [_pair(local, run), _pair(local_2, run_2)]
    first = FRONTIER["replay"](pairs, 1, "joined")
    assert first.improved == pytest.approx(0.25)  # 1 of 2, then 0 of 2 (ties do not count)
    assert first.worst == pytest.approx(-10.0) and first.lowest == pytest.approx(-20.0)
    second = FRONTIER["replay"](pairs, 2, "joined")
    assert second.improved == pytest.approx(0.5) and second.lowest == 0.0


def test_runs_pair_with_the_local_run_trained_alike_and_collaboration_keys_do_not_matter():
    local = _local({"a": [0.5]}, seed=0, **{"learning-rate": 0.001})
    other_lr = _local({"a": [0.5]}, seed=0, **{"learning-rate": 0.002})
    run = _joined(local, {"a": [0.6]}, {"a": [(1.0, 1.0)]}, **{"contrastive-weight": 1.0})
    orphan = _joined(_local({"a": [0.5]}, seed=3), {"a": [0.6]}, {"a": [(1.0, 1.0)]})
    no_fallback = RunResults(
        config={**run.config}, users=USERS, rounds=[RoundRecord(1, {"a": {"accuracy": 0.7}})]
    )
    pairs = FRONTIER["pair_runs"]([other_lr, run, local, orphan, no_fallback])
    assert [(p.run, p.local) for p in pairs] == [(run, local)]


def test_lone_models_that_differ_from_the_local_run_are_counted():
    local = _local({"a": [0.5], "b": [0.4]})
    run = _joined(local, {"a": [0.6], "b": [0.3]}, {"a": [(0.1, 0.1)], "b": [(0.1, 0.1)]})
    assert FRONTIER["mismatches"]([_pair(local, run)], 1) == (0, 2)
    run.rounds[0].metrics["b"]["miou"] = 0.41  # a lone model that is not the local run
    assert FRONTIER["mismatches"]([_pair(local, run)], 1) == (1, 2)


unit = st.floats(0.05, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(unit, unit, unit, unit, unit, unit), min_size=1, max_size=6),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_no_thresholds_beat_the_oracle_and_the_oracle_never_loses(users, confidence, last):
    pairs = []
    for seed, (la, lb, ja, jb, sa, sb) in enumerate(users):
        local = _local({"a": [la], "b": [lb]}, seed=seed)
        run = _joined(local, {"a": [ja], "b": [jb]}, {"a": [(sa, sb)], "b": [(sb, sa)]})
        pairs.append(_pair(local, run))
    oracle = FRONTIER["replay"](pairs, 1, "oracle")
    rule = FRONTIER["replay"](pairs, 1, "thresholds", confidence, last)
    assert oracle.improved >= rule.improved
    assert oracle.delta >= rule.delta - 1e-9
    assert oracle.lowest >= 0.0
    assert FRONTIER["replay"](pairs, 1, "joined").improved >= rule.improved


def test_the_script_prints_and_writes_the_frontier_of_runs_on_disk(tmp_path, capsys):
    local = _local({"a": [0.5, 0.5], "b": [0.4, 0.4]})
    run = _joined(local, {"a": [0.6, 0.7], "b": [0.3, 0.5]}, {u: [(0.9, 0.6)] * 2 for u in "ab"})
    local.write(tmp_path / "local")
    run.write(tmp_path / "muscle")
    output = tmp_path / "frontier.json"
    main = FRONTIER["main"]
    args = ["--runs", str(tmp_path), "--confidence", "0.8", "--last-share", "0.5"]
    assert main([*args, "--rounds", "1", "2", "--output", str(output)]) == 0
    (table,) = json.loads(output.read_text())["groups"]
    assert table["group"] == "all runs" and table["seeds"] == [0]
    assert [row["rule"] for row in table["rows"] if row["round"] == 2] == [
        "joined",
        "oracle",
        "confidence 0.8, last 0.5",
    ]
    second = {row["rule"]: row for row in table["rows"] if row["round"] == 2}
    assert second["joined"]["improved"] == 1.0 and second["joined"]["lowest"] > 0
    assert table["checks"]["2"] == {"lone-differs": 0, "lone-kept": 0}
    assert "confidence 0.8, last 0.5" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="outside 1-2"):
        main([*args, "--rounds", "3", "--output", str(output)])
    with pytest.raises(SystemExit, match="no collaborative run"):
        main(["--runs", str(tmp_path / "local"), "--output", str(output)])


def test_runs_of_different_variants_are_replayed_as_separate_groups(tmp_path):
    local = _local({"a": [0.5], "b": [0.5]})
    shares = {u: [(1.0, 1.0)] for u in "ab"}
    muscle = _joined(local, {"a": [0.6], "b": [0.6]}, shares)
    pairwise = _joined(local, {"a": [0.4], "b": [0.4]}, shares, algorithm="pairwise")
    local_1 = _local({"a": [0.5], "b": [0.5]}, seed=1)
    muscle_1 = _joined(local_1, {"a": [0.6], "b": [0.4]}, shares)
    groups = FRONTIER["group_pairs"](
        FRONTIER["pair_runs"]([local, muscle, pairwise, local_1, muscle_1])
    )
    assert {name: len(members) for name, members in groups.items()} == {
        'algorithm="muscle"': 2,
        'algorithm="pairwise"': 1,
    }
    for run in (local, muscle, pairwise):
        run.write(tmp_path / f"{run.config['algorithm']}")
    output = tmp_path / "frontier.json"
    assert FRONTIER["main"](["--runs", str(tmp_path), "--output", str(output)]) == 0
    joined = {
        group["group"]: next(r for r in group["rows"] if r["rule"] == "joined")["improved"]
        for group in json.loads(output.read_text())["groups"]
    }
    assert joined == {'algorithm="muscle"': 1.0, 'algorithm="pairwise"': 0.0}


def test_a_user_whose_local_metric_is_zero_is_left_out_as_delta_leaves_it_out():
    local = _local({"a": [0.5], "b": [0.0]})
    run = _joined(local, {"a": [0.6], "b": [0.3]}, {u: [(1.0, 1.0)] for u in "ab"})
    assert set(FRONTIER["user_rounds"](_pair(local, run), 1)) == {"a"}
    assert FRONTIER["replay"]([_pair(local, run)], 1, "joined").delta == pytest.approx(20.0)
