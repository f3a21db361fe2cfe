"""The sweep command: variants, shared local baselines, the table, and one real tiny sweep."""

from __future__ import annotations

import json

import pytest

from fedmuscle_flwr.results import RoundRecord, RunResults, UserInfo
from fedmuscle_flwr.sweep import (
    Variant,
    local_overrides,
    main,
    parse_attack,
    parse_variants,
    sweep_table,
)
from tests.tiny import TINY_FEDERATION


def test_variants_and_grids():
    variants = parse_variants(
        ["paper:", 'gate:gate="validation" validation-fraction=0.1'],
        ["contrastive-weight=0.1,1.0", "tau=0.2"],
    )
    assert [v.name for v in variants] == [
        "paper", "gate", "contrastive-weight=0.1 tau=0.2", "contrastive-weight=1.0 tau=0.2",
    ]  # fmt: skip
    assert variants[1].overrides == {"gate": "validation", "validation-fraction": 0.1}
    assert variants[3].overrides == {"contrastive-weight": 1.0, "tau": 0.2}
    with pytest.raises(SystemExit, match="NAME:key=value"):
        parse_variants(["no colon"], [])
    with pytest.raises(SystemExit, match="at least one"):
        parse_variants([], [])


def test_local_baseline_drops_collaboration_keys_only():
    ours = {"contrastive-weight": 0.1, "warmup-rounds": 3, "gate": "validation",
            "validation-fraction": 0.15, "label-budget": 100, "seed": 2}  # fmt: skip
    assert local_overrides(ours) == {
        "validation-fraction": 0.15, "label-budget": 100, "seed": 2, "algorithm": "local",
    }  # fmt: skip


def test_an_attack_is_the_sweeps_key_not_the_run_configs():
    ours = {"attack": "a:random", "screening": "exclude", "seed": 0}
    assert local_overrides(ours) == {"seed": 0, "algorithm": "local"}
    assert parse_attack("convnext-cls:replay") == ("convnext-cls", "replay")
    for bad in ("convnext-cls", "convnext-cls:lies", ":random"):
        with pytest.raises(SystemExit, match="USER:KIND"):
            parse_attack(bad)


def test_with_an_attack_delta_counts_the_honest_users_only():
    variants = [Variant("lie", {"attack": "a:random"})]
    outcome = {"lie": {0: (_run(0.1, "muscle"), _run(0.5, "local"))}}
    _, raw = sweep_table(variants, outcome, base={})
    assert set(raw["variants"]["lie"]["per_user"]) == {"b"}  # the liar "a" is left out
    assert raw["variants"]["lie"]["delta"] == [0.0]


def _run(value: float, algorithm: str) -> RunResults:
    users = {u: UserInfo(u, "vit", "image-classification", "accuracy") for u in ("a", "b")}
    metrics = {"a": {"accuracy": value}, "b": {"accuracy": 0.5}}
    return RunResults({"algorithm": algorithm, "num-server-rounds": 1}, users,
                      [RoundRecord(1, metrics=metrics)])  # fmt: skip


def test_table_rows_compare_each_variant_with_its_local_run():
    variants = [Variant("v", {"tau": 0.2})]
    outcome = {"v": {0: (_run(0.6, "muscle"), _run(0.5, "local")),
                     1: (_run(0.4, "muscle"), _run(0.5, "local"))}}  # fmt: skip
    table, raw = sweep_table(variants, outcome, base={})
    # seed 0: a +20 %, b 0 % -> +10 %; seed 1: a -20 % -> -10 %
    assert "| v | `tau=0.2` | +0.00 ± 14.14 | -10.00 ± 14.14 | 0.25 | +0.00 ± 14.14 |" in table
    assert raw["variants"]["v"]["per_user"]["a"] == pytest.approx([20.0, -20.0])


def test_the_joined_column_reads_the_joined_model_where_the_user_fell_back():
    fell_back = _run(0.5, "muscle")  # "a" reports its lone model; its joined one scored 0.6
    fell_back.rounds[-1].metrics["a"] |= {"fallback-local": 1.0, "joined-accuracy": 0.6}
    outcome = {"v": {0: (fell_back, _run(0.5, "local"))}}
    table, raw = sweep_table([Variant("v", {})], outcome, base={})
    assert raw["variants"]["v"]["delta"] == [0.0]  # what the user reports: its lone model
    assert raw["variants"]["v"]["joined"] == pytest.approx([10.0])  # a +20 %, b 0 %
    assert "| +0.00 ± 0.00 | +0.00 ± 0.00 | 0.00 | +10.00 ± 0.00 |" in table
    before = _run(0.5, "muscle")  # a run from before the key: its joined models unknown
    before.rounds[-1].metrics["a"] |= {"fallback-local": 1.0}
    outcome["v"][1] = (before, _run(0.5, "local"))
    table, _ = sweep_table([Variant("v", {})], outcome, base={})
    assert "| +10.00 ± 0.00 (1 of 2 seeds) |" in table


def tiny_sweep(tmp_path, *variants: str, rounds: int = 2, jobs: int = 2) -> list[str]:
    """Command-line arguments of a sweep of the tiny federation."""
    base = (
        f'num-server-rounds={rounds} federation="{TINY_FEDERATION}" public-size=64 '
        "public-batch-size=8 embed-dim=16 num-partners=2 local-steps=1 batch-size=8 "
        "node-wait-timeout=1.0"
    )
    argv = ["--seeds", "0", "--jobs", str(jobs), "--output-dir", str(tmp_path / "sweep")]
    return [*argv, "--base", base, *(f"--variant={v}" for v in variants)]


@pytest.mark.usefixtures("flower_task_identity")
def test_a_tiny_sweep_runs_and_reuses_its_runs(tmp_path, capsys):
    argv = tiny_sweep(tmp_path, "paper:", "small-lambda:contrastive-weight=0.1")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 runs, 0 reused, 3 to run" in out  # one local baseline shared by both variants
    raw = json.loads((tmp_path / "sweep" / "table.json").read_text())
    assert set(raw["variants"]) == {"paper", "small-lambda"}
    assert main(argv) == 0
    assert "3 runs, 3 reused, 0 to run" in capsys.readouterr().out
    # a second sweep into the same directory shares the runs and keeps the first's table
    other = tiny_sweep(tmp_path, "paper:")
    assert main(other) == 0
    assert "2 runs, 2 reused, 0 to run" in capsys.readouterr().out
    tables = sorted((tmp_path / "sweep" / "tables").glob("*.json"))
    assert len(tables) == 2
    kept = [set(json.loads(t.read_text())["variants"]) for t in tables]
    assert sorted(kept, key=len) == [{"paper"}, {"paper", "small-lambda"}]
    assert set(json.loads((tmp_path / "sweep" / "table.json").read_text())["variants"]) == {
        "paper"
    }  # the latest


@pytest.mark.usefixtures("flower_task_identity")
def test_a_failing_run_is_named_and_the_others_are_kept(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    argv = tiny_sweep(tmp_path, "ok:", f'broken:federation="{missing}"', rounds=1, jobs=1)
    with pytest.raises(SystemExit, match="2 of 4 runs failed"):
        main(argv)
    assert capsys.readouterr().out.count("FAILED") == 2
    assert len(list((tmp_path / "sweep").glob("*/run-1/results.json"))) == 2
