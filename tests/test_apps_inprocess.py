"""Both apps end to end in one process: all four task types, real models, real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client_app.app import app as client_app
from client_app.attacks import lying_client_app
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.results import RunResults
from server_app.app import main as server_main
from server_app.inprocess import InProcessGrid
from server_app.strategy import RunFailed
from tests.tiny import TINY_FEDERATION, tiny_run_config

pytestmark = pytest.mark.usefixtures("flower_task_identity")
TASKS = {
    "image-classification",
    "multi-label-classification",
    "semantic-segmentation",
    "text-classification",
}


def run(
    tmp_path: Path,
    nodes: dict[int, dict] | None = None,
    drop=None,
    fails: type[Exception] | None = None,
    app=client_app,
    keep_trainers: bool = False,
    **overrides,
) -> RunResults:
    """Run the ServerApp over an in-process grid; return what it wrote.

    ``fails``: the error the ServerApp must stop with (a failed run exits non-zero).
    ``keep_trainers``: the grid keeps each user's trainer (else each round restores it).
    """
    run_config = tiny_run_config(tmp_path, **overrides)
    if nodes is None:
        users = load_federation(run_config["federation"]).users
        nodes = {100 + i: {"partition-id": i} for i in range(len(users))}
    grid = InProcessGrid(app, nodes, run_config, drop=drop, keep_trainers=keep_trainers)
    context = Context(7, 0, {}, RecordDict(), run_config)
    if fails is None:
        server_main(grid, context)
    else:
        with pytest.raises(fails):
            server_main(grid, context)
    path = tmp_path / "out" / "run-7" / "results.json"
    results = RunResults.from_dict(json.loads(path.read_text()))
    assert results.status == ("complete" if fails is None else "failed"), results.reason
    return results


def assert_everyone_replied_every_round(results: RunResults, rounds: int = 2) -> None:
    assert len(results.rounds) == rounds
    for record in results.rounds:
        assert not record.failed and sorted(record.replied) == sorted(results.users)
    assert len(results.users) == len(load_federation(results.config["federation"]).users)


def test_two_rounds_over_all_four_task_types(tmp_path):
    results = run(tmp_path)
    assert {u.task for u in results.users.values()} == TASKS
    assert [r.round for r in results.rounds] == [1, 2]
    for record in results.rounds:
        assert sorted(record.replied) == sorted(results.users), record.failed
    first, second = results.rounds
    assert all(first.uplink_bytes[u] >= 8 * 16 * 4 for u in results.users)  # Z (8 x 16 float32)
    assert all(second.uplink_bytes[u] == 0 for u in results.users)  # the last round asks for no Z
    assert all(
        second.downlink_bytes[u] > first.downlink_bytes[u] for u in results.users
    )  # payloads
    for user_id, info in results.users.items():
        assert 0.0 <= results.final[user_id][info.metric] <= 1.0
        assert "contrastive-loss" in second.metrics[user_id]
        assert "contrastive-loss" not in first.metrics[user_id]
    assert (tmp_path / "out" / "run-7" / "metrics.png").stat().st_size > 1000
    assert (tmp_path / "out" / "run-7" / "bytes.png").stat().st_size > 1000
    # Each user's state after each round, under the run's experiment id and the user's id.
    saved = sorted(p.relative_to(tmp_path / "state") for p in (tmp_path / "state").glob("*/*/*.pt"))
    assert [p.parts[1:] for p in saved] == [
        (user, f"round-{r}.pt") for user in sorted(results.users) for r in (1, 2)
    ]
    assert len({p.parts[0] for p in saved}) == 1


def test_two_rounds_on_the_real_data_sets_over_all_four_task_types(tmp_path, monkeypatch):
    """``dataset = "real"`` end to end: Fashion-MNIST, emoji and WordNet, public emoji."""
    import fedmuscle_flwr.data.real as real
    from fedmuscle_flwr.data.real.debian import (
        EMOJI_FONT,
        EMOJI_TEST,
        FASHION_MNIST_DIR,
        WORDNET_DIR,
        MissingDebianPackageError,
        apt_command,
        debian_file,
    )

    for spec in (EMOJI_FONT, EMOJI_TEST, FASHION_MNIST_DIR, WORDNET_DIR):
        try:
            debian_file(spec)
        except MissingDebianPackageError:
            pytest.skip(f"Debian package {spec.package} absent; run: {apt_command(spec.package)}")
    asked: list[str] = []
    load_private = real.load_real_private

    def spied(task: str, *args, **kwargs):
        asked.append(task)
        return load_private(task, *args, **kwargs)

    monkeypatch.setattr(real, "load_real_private", spied)
    results = run(tmp_path, dataset="real", **{"local-steps": 1})
    assert_everyone_replied_every_round(results)
    assert set(asked) == TASKS  # every user's private set came from the real source
    assert all(results.rounds[0].uplink_bytes[u] > 0 for u in results.users)  # Z of emoji
    assert all("contrastive-loss" in m for m in results.rounds[1].metrics.values())
    for user_id, info in results.users.items():
        assert 0.0 <= results.final[user_id][info.metric] <= 1.0


def test_users_of_one_label_space_distil_each_others_predictions(tmp_path):
    """distill-weight > 0: the image and the text classifier (the same world classes) teach
    each other on the public batch; without distill-presence the multi-label and
    segmentation users take no part."""
    results = run(tmp_path, **{"distill-weight": 1.0, "distill-presence": False})
    assert_everyone_replied_every_round(results)
    first, second = results.rounds
    assert first.teachers == {"bert-text": ["cnn-cls"], "cnn-cls": ["bert-text"]}
    for user in results.users:
        distils = user in ("bert-text", "cnn-cls")
        assert ("distill-loss" in second.metrics[user]) == distils
        if distils:
            assert second.metrics[user]["distill-loss"] >= 0
    # each teacher's probabilities travel beside its Z: more uplink than Z alone
    assert first.uplink_bytes["cnn-cls"] > first.uplink_bytes["segformer-seg"]


def test_the_segmentation_user_teaches_the_multi_label_user_presence(tmp_path):
    """distill-presence with presence-teacher = "segmentation": the SegFormer sends its
    image-level presence of the world's kinds, the multi-label ViT distils it, and the
    single-label users still teach only each other."""
    results = run(tmp_path, **{"distill-presence": True, "presence-teacher": "segmentation"})
    assert_everyone_replied_every_round(results)
    first, second = results.rounds
    assert first.teachers == {
        "bert-text": ["cnn-cls"],
        "cnn-cls": ["bert-text"],
        "vit-multilabel": ["segformer-seg"],
    }
    assert second.metrics["vit-multilabel"]["distill-loss"] >= 0
    assert "distill-loss" not in second.metrics["segformer-seg"]
    # the presence travels beside the SegFormer's Z; the ViT sends none
    assert first.uplink_bytes["segformer-seg"] > first.uplink_bytes["vit-multilabel"]


def test_contrastive_weight_0_with_distillation_is_distillation_alone(tmp_path):
    """lambda 0 and distill-weight > 0: the label-space peers still exchange predictions and
    distil, with no contrastive term (lambda 0 recorded); with neither, nothing is sent."""
    results = run(tmp_path / "distil", **{"contrastive-weight": 0.0, "distill-weight": 1.0})
    assert_everyone_replied_every_round(results)
    first, second = results.rounds
    assert first.teachers == {"bert-text": ["cnn-cls"], "cnn-cls": ["bert-text"]}
    for user in ("bert-text", "cnn-cls"):
        assert second.metrics[user]["distill-loss"] >= 0
        assert second.metrics[user]["lambda"] == 0.0
        assert second.metrics[user]["contrastive-loss"] == 0.0
    neither = run(tmp_path / "neither", **{"contrastive-weight": 0.0, "distill-weight": 0.0})
    assert_everyone_replied_every_round(neither)
    assert all(v == 0 for r in neither.rounds for v in r.uplink_bytes.values())
    assert all("distill-loss" not in m for r in neither.rounds for m in r.metrics.values())


def test_local_exchanges_no_representations(tmp_path):
    results = run(tmp_path, algorithm="local")
    assert_everyone_replied_every_round(results)
    assert all(v == 0 for r in results.rounds for v in r.uplink_bytes.values())
    assert all("contrastive-loss" not in m for r in results.rounds for m in r.metrics.values())


def test_a_failing_and_a_silent_user_do_not_stop_the_run(tmp_path):
    users = load_federation(TINY_FEDERATION).users
    nodes = {100 + i: {"partition-id": i} for i in range(len(users))}
    nodes[999] = {"partition-id": 99}  # a node whose profile lookup fails
    results = run(
        tmp_path,
        nodes=nodes,
        drop=lambda node, rnd: node == 102 and rnd == 2,  # segformer-seg is silent in round 2
        fails=RunFailed,  # the others finish, but a node that failed every round fails the run
        **{"num-partners": 3, "local-steps": 1},
    )
    first, second = results.rounds
    assert "partition-id 99 is out of range" in first.failed["node-999"]
    assert "node-999 failed every round" in results.reason
    assert len(first.replied) == 4
    assert second.failed["segformer-seg"] == "no reply before the timeout"
    assert sorted(second.replied) == sorted(u.id for u in users if u.id != "segformer-seg")


def test_failed_rounds_are_recorded_under_the_users_ids(tmp_path):
    """Users whose loss is not finite fail, under their ids; nobody left: the run stops."""
    results = run(tmp_path, fails=RunFailed, **{"learning-rate": 1e30, "num-server-rounds": 2})
    assert len(results.rounds) == 1 and not results.rounds[0].replied
    named = set().union(*(record.failed for record in results.rounds))
    assert not any(name.startswith("node-") for name in named)  # ids, not node numbers
    assert all(
        "FloatingPointError" in reason for r in results.rounds for reason in r.failed.values()
    )


def test_an_unknown_model_type_stops_the_run_before_round_one(tmp_path):
    from fedmuscle_flwr.config import ConfigError

    federation = tmp_path / "typo.toml"
    federation.write_text(
        Path(TINY_FEDERATION).read_text().replace('model = "small-cnn"', 'model = "small-cn"')
    )
    results = run(tmp_path, fails=ConfigError, federation=str(federation))
    assert results.rounds == []
    assert "user 'cnn-cls': unknown client model 'small-cn'" in results.reason
    assert "Did you mean 'small-cnn'" in results.reason


@pytest.mark.parametrize("allowed", [False, True])
def test_fewer_simulated_nodes_than_users_is_refused_unless_allowed(tmp_path, allowed):
    nodes = {100 + i: {"partition-id": i, "num-partitions": 2} for i in range(2)}
    results = run(
        tmp_path,
        nodes=nodes,
        fails=None if allowed else RunFailed,
        **{"allow-missing-users": allowed},
    )
    assert results.missing_users == ["segformer-seg", "bert-text"]
    if allowed:
        assert len(results.rounds) == 2 and all(len(r.replied) == 2 for r in results.rounds)
    else:
        assert len(results.rounds) == 1  # stopped after the first exchange
        assert "num-supernodes=4" in results.reason
        assert sorted(results.rounds[0].failed) == ["cnn-cls", "vit-multilabel"]


def _learning_metrics(results: RunResults) -> list[dict]:
    return [
        {
            u: {k: v for k, v in m.items() if not k.endswith("-seconds")}
            for u, m in r.metrics.items()
        }
        | {"partners": r.partners}
        for r in results.rounds
    ]


def test_later_rounds_restore_each_user_from_disk_with_the_kept_trainers_results(
    tmp_path, monkeypatch
):
    """A process per message: round 2 restores each user's state saved after round 1."""
    from fedmuscle_flwr.training import Trainer

    restored: list[Trainer] = []
    load = Trainer.load_state_dict

    def counted(self: Trainer, state: dict) -> None:
        restored.append(self)
        load(self, state)

    monkeypatch.setattr(Trainer, "load_state_dict", counted)
    fresh = run(tmp_path / "fresh")
    assert_everyone_replied_every_round(fresh)
    # Once per user in round 2, and once for the lone model each user holds beside its
    # joined one (fallback = "auto", the default).
    joined = [t for t in restored if t.fallback is not None]
    assert len(joined) == len(fresh.users) and len(restored) == 2 * len(fresh.users)
    assert {id(t.fallback) for t in joined} == {id(t) for t in restored} - {id(t) for t in joined}
    restored.clear()
    kept = run(tmp_path / "kept", keep_trainers=True)
    assert restored == []  # a warm process reuses the trainers it built
    assert _learning_metrics(kept) == _learning_metrics(fresh)


def test_a_stopped_run_resumed_ends_as_the_uninterrupted_run(tmp_path, monkeypatch):
    import client_app.state as state_module
    from server_app.strategy import FedMuscleStrategy

    rounds = {"num-server-rounds": 4, "validation-fraction": 0.2}
    uninterrupted = run(tmp_path / "whole", **rounds)

    configure = FedMuscleStrategy.configure_train

    def die_in_round_3(self, server_round, *args):
        if server_round + self.rounds_before == 3:
            raise KeyboardInterrupt  # the launch is killed after round 2
        return configure(self, server_round, *args)

    monkeypatch.setattr(FedMuscleStrategy, "configure_train", die_in_round_3)
    stopped = run(tmp_path / "stopped", fails=KeyboardInterrupt, **rounds)
    assert len(stopped.rounds) == 2
    monkeypatch.setattr(FedMuscleStrategy, "configure_train", configure)
    state_module._CACHE.clear()  # a new process: client state only from disk

    run_dir = tmp_path / "stopped" / "out" / "run-7"
    nodes = {500 + i: {"partition-id": i} for i in range(4)}  # the new launch's node ids
    resumed = run(tmp_path / "stopped", nodes=nodes, **rounds, **{"resume-from": str(run_dir)})
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4]
    assert _learning_metrics(resumed) == _learning_metrics(uninterrupted)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    from fedmuscle_flwr.config import ConfigError

    first = run(tmp_path, **{"num-server-rounds": 1})
    run_dir = tmp_path / "out" / "run-7"
    assert first.status == "complete" and (run_dir / "checkpoint.pt").is_file()
    assert (run_dir / "checkpoint.pt").stat().st_mode & 0o777 == 0o600  # it holds users' Z
    refused = run(tmp_path, fails=ConfigError, **{"resume-from": str(run_dir), "tau": 0.2})
    assert "differs from the checkpoint's in tau: 0.1 -> 0.2" in refused.reason
    assert len(refused.rounds) == 0  # nothing of the first run's results was taken over


def test_screening_leaves_a_lying_user_out_of_every_payload(tmp_path):
    """One user sends random unit rows every round; the others are honest."""
    liar = "vit-multilabel"
    results = run(
        tmp_path, app=lying_client_app(client_app, liar=liar, attack="random"),
        **{"num-server-rounds": 4, "screening": "exclude", "public-batch-size": 64,
           "embed-dim": 64, "screening-min-rounds": 2},
    )  # fmt: skip
    scored = [r for r in results.rounds if r.screening]
    assert len(scored) == 3  # the last round computes no payloads
    for record in scored:
        assert set(record.screening) == set(results.users)
        assert all(set(v) >= {"score", "excluded"} for v in record.screening.values())
    last = scored[-1].screening
    assert last[liar]["flagged"] and last[liar]["excluded"]
    assert last[liar]["score"] < min(v["score"] for u, v in last.items() if u != liar)
    assert not scored[0].screening[liar]["excluded"]  # not before screening-min-rounds
    for earlier, later in zip(results.rounds, results.rounds[1:], strict=False):
        excluded = {u for u, v in earlier.screening.items() if v["excluded"]}
        for user in excluded:  # out of the next round's exchange, both ways
            assert user not in later.partners
            assert all(user not in partners for partners in later.partners.values())
    assert liar not in results.rounds[-1].partners


def test_dp_run_reports_epsilon_per_user_and_round_and_stops_at_the_budget(tmp_path):
    dp = {"dp": True, "dp-epsilon": 4.0, "gate": "off"}
    first = run(tmp_path, **{"num-server-rounds": 2, **dp})
    for record in first.rounds:
        assert set(record.privacy) == set(first.users)
        assert all(p["delta"] == 1e-5 for p in record.privacy.values())
    for user in first.users:
        spent = [r.privacy[user]["epsilon"] for r in first.rounds]
        assert 0 < spent[0] < spent[1] <= 4.0 * (1 + 1e-6)
    # The planned run spent the budget: one more round would pass it, so every user stops.
    run_dir = tmp_path / "out" / "run-7"
    more = run(
        tmp_path, fails=RunFailed, **{"num-server-rounds": 3, "resume-from": str(run_dir), **dp}
    )
    assert [r.round for r in more.rounds] == [1, 2, 3]
    assert set(more.rounds[-1].failed) == set(first.users)
    assert all("privacy budget spent" in why for why in more.rounds[-1].failed.values())
