"""Run config, federation files and node -> user lookup: values checked at the edge."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.federation import FederationError, load_federation
from fedmuscle_flwr.models import list_client_models
from fedmuscle_flwr.preflight import check_run
from fedmuscle_flwr.tasks import list_tasks

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_lists_every_key_with_the_defaults():
    section = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(section) == set(RunConfig().to_dict())
    assert RunConfig.from_run_config(section) == RunConfig()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (
            "algorithm",
            "fedavg",
            r"algorithm must be one of \['ensemble', 'local', 'muscle', 'muscle-shuffled', "
            r"'pairwise'\]",
        ),
        ("payload", "sparse", "payload must be one of"),
        ("contrastive-order", "during", "contrastive-order must be one of"),
        ("public-norm", "batch", "public-norm must be one of"),
        ("optimizer-state", "split", "optimizer-state must be one of"),
        ("projection", "deep", r"projection must be one of \['linear', 'mlp'\]"),
        ("gate", "always", "gate must be one of"),
        ("partner-selection", "best", "partner-selection must be one of"),
        ("warmup-rounds", -1, "warmup-rounds must be >= 0"),
        ("lambda-ramp-rounds", -2, "lambda-ramp-rounds must be >= 0"),
        ("label-budget", -5, "label-budget must be >= 0"),
        ("validation-fraction", 1.0, r"validation-fraction must be in \[0, 1\)"),
        ("partner-exploration", 1.5, r"partner-exploration must be in \[0, 1\]"),
        ("gate-tolerance", -0.1, "gate-tolerance must be >= 0"),
        ("gate-min-scale", 1.5, r"gate-min-scale must be in \[0, 1\]"),
        ("gate-criterion", "accuracy", "gate-criterion must be one of"),
        ("fallback-criterion", "vote", "fallback-criterion must be one of"),
        ("fallback-confidence", 1.0, r"fallback-confidence must be in \[0.5, 1\)"),
        ("fallback-window", 0, "fallback-window must be >= 1"),
        ("fallback-last-share", 1.0, r"fallback-last-share must be in \[0, 1\)"),
        ("num-partners", 0, "num-partners must be >= 1"),
        ("public-batch-size", 1, "public-batch-size must be >= 2"),
        ("tau", 0.0, "tau must be a positive number"),
        ("tau-alpha", -1.0, "tau-alpha must be a positive number"),
        ("contrastive-weight", -0.5, "contrastive-weight must be >= 0"),
        ("fraction-train", 1.5, r"fraction-train must be in \(0, 1\]"),
        ("num-server-rounds", "3", "num-server-rounds must be an integer"),
        ("tau", "0.1", "tau must be a number"),
        ("amp", 1, "amp must be true or false"),
        ("public-batch-size", 4096, "must not exceed public-size"),
        ("device", "tpu", "device must be one of"),
        ("quorum", 1, "quorum must be >= 2"),
    ],
)
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_run_config({key: value})


def test_default_federation_is_heterogeneous_and_buildable():
    federation = load_federation("default")
    users = federation.users
    assert len(users) >= 6
    assert (
        {u.task for u in users}
        == set(list_tasks())
        >= {
            "image-classification",
            "multi-label-classification",
            "semantic-segmentation",
            "text-classification",
        }
    )
    assert len({u.model for u in users}) >= 4
    assert "bert" in {u.model for u in users if "lora" in u.model_config}
    assert {u.model for u in users} <= set(list_client_models())


def test_node_to_user_lookup(tmp_path):
    federation = load_federation("default")
    assert federation.user_for_node({"partition-id": 0}) == federation.users[0]
    assert federation.user_for_node({"user": "bert-text"}).model == "bert"
    with pytest.raises(FederationError, match="num-supernodes=6"):
        federation.user_for_node({"partition-id": 6})
    with pytest.raises(FederationError, match="no user 'nobody'"):
        federation.user_for_node({"user": "nobody"})
    with pytest.raises(FederationError, match="names no user"):
        federation.user_for_node({})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[users]]\nid='a'\nmodel='vit'\n", "has no 'task'"),
        ("[[users]]\nid='a'\nmodel='vit'\ntask='x'\ncolour='red'\n", r"unknown keys \['colour'\]"),
        (
            "[[users]]\nid='a'\nmodel='vit'\ntask='x'\npartition='shards'\n",
            "partition must be one of",
        ),
        (
            "[[users]]\nid='a'\nmodel='vit'\ntask='x'\n[[users]]\nid='a'\nmodel='vit'\ntask='x'\n",
            "duplicate user ids",
        ),
        ("", "lists no users"),
        ("[[users]]\nid='a'\nmodel='vit'\ntask='x'\ncount=0\n", "count must be a whole number"),
        ("users = [", "not valid TOML"),
    ],
)
def test_bad_federation_files(tmp_path, text, match):
    path = tmp_path / "fed.toml"
    path.write_text(text)
    with pytest.raises(FederationError, match=match):
        load_federation(str(path))


def test_a_user_group_declares_count_alike_users(tmp_path):
    path = tmp_path / "fed.toml"
    path.write_text(
        "[[users]]\nid='cnn'\ncount=12\nmodel='small-cnn'\ntask='image-classification'\n"
        "partition='iid'\n[users.model-config]\nstem_width=8\n"
        "[[users]]\nid='bert'\nmodel='bert'\ntask='text-classification'\n"
    )
    users = load_federation(str(path)).users
    assert [u.id for u in users[:3]] == ["cnn-01", "cnn-02", "cnn-03"]
    assert users[11].id == "cnn-12" and users[12].id == "bert" and len(users) == 13
    assert all(u.partition == "iid" and u.model_config == {"stem_width": 8} for u in users[:12])


def test_the_hundred_user_federation_ships():
    federation = load_federation("hundred")
    assert len(federation.users) == 100 and len({u.id for u in federation.users}) == 100
    assert {u.task for u in federation.users} == {
        "image-classification", "multi-label-classification", "semantic-segmentation",
        "text-classification",
    }  # fmt: skip
    assert check_run(RunConfig(federation="hundred")) is not None


def test_missing_federation_lists_the_shipped_ones():
    with pytest.raises(FederationError, match=r"neither a shipped federation \['default'"):
        load_federation("/no/such/file.toml")


def test_real_federation_uses_the_two_pretrained_encoders():
    users = load_federation("real").users
    assert {u.task for u in users} == set(list_tasks())
    assert {"efficientnet-lite0", "minilm-l6"} <= {u.model for u in users}
    assert all(
        u.model_config.get("pretrained") == "package"
        for u in users
        if u.model in {"efficientnet-lite0", "minilm-l6"}
    )
    assert {u.model for u in users} <= set(list_client_models())


def test_a_simulation_with_fewer_nodes_than_users_is_refused_naming_them():
    federation = load_federation("default")
    federation.check_every_user_has_a_node({"partition-id": 0, "num-partitions": 6})
    with pytest.raises(FederationError, match=r"users without a node: \['bert-text', 'dist"):
        federation.check_every_user_has_a_node({"partition-id": 0, "num-partitions": 4})
    with pytest.raises(FederationError, match="num-supernodes=6"):
        federation.check_every_user_has_a_node({"partition-id": 1, "num-partitions": 2})


def test_preflight_names_every_bad_user_before_launch(tmp_path):
    from fedmuscle_flwr.preflight import check_run

    text = load_federation("default").source
    broken = tmp_path / "broken.toml"
    broken.write_text(
        Path(text).read_text()
        .replace('model = "small-cnn"', 'model = "small-cn"')
        .replace('task = "semantic-segmentation"', 'task = "segmentation"')
        .replace("dims = [16, 32, 64, 64]", "widths = [16, 32, 64, 64]")
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        check_run(RunConfig(federation=str(broken)))
    message = str(caught.value)
    assert "user 'cnn-cls': unknown client model 'small-cn'. Did you mean 'small-cnn'" in message
    assert "user 'segformer-seg': unknown task 'segmentation'" in message
    assert "user 'convnext-cls': model 'convnext' takes no config key(s) ['widths']" in message
    assert check_run(RunConfig()).users == load_federation("default").users
    with pytest.raises(ConfigError, match="embed-dim must be >= 1"):
        RunConfig(embed_dim=0)
