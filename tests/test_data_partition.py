"""Partitions across users: sizes, coverage, IID balance, Dirichlet label skew, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr.data.partition import SCHEMES, partition, partition_sizes, user_split
from fedmuscle_flwr.data.world import TASKS, WorldConfig, private_dataset


@pytest.fixture(scope="module")
def world_set(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    cfg = WorldConfig(private_size=1200)
    cache = tmp_path_factory.mktemp("world")
    return private_dataset(cfg, "image-classification", cache_dir=cache)


def labels_only(n: int, num_classes: int = 5, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    features = Features({"index": Value("int64"), "label": ClassLabel(num_classes=num_classes)})
    data = {"index": np.arange(n), "label": rng.integers(0, num_classes, size=n)}
    return Dataset.from_dict(data, features=features).with_format("numpy")


def shares(ds: Dataset, n: int, **kwargs: object) -> list[Dataset]:
    return [partition(ds, num_partitions=n, partition_id=i, **kwargs) for i in range(n)]  # type: ignore[arg-type]


def label_tv(parts: list[Dataset], num_classes: int) -> float:
    """Mean total-variation distance between each share's label histogram and the pool's."""
    hists = np.stack([np.bincount(p["label"], minlength=num_classes) for p in parts]).astype(float)
    pool = hists.sum(axis=0) / hists.sum()
    per = hists / hists.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(per - pool).sum(axis=1).mean())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_shares_cover_every_row_once(world_set: Dataset, scheme: str) -> None:
    parts = shares(world_set, 6, scheme=scheme, alpha=0.3, seed=1)
    indices = np.concatenate([p["index"] for p in parts])
    assert len(indices) == len(world_set)
    assert sorted(indices.tolist()) == list(range(len(world_set)))
    assert sum(partition_sizes(world_set, num_partitions=6, scheme=scheme, alpha=0.3, seed=1)) == (
        len(world_set)
    )


def test_iid_sizes_nearly_equal_and_labels_balanced(world_set: Dataset) -> None:
    sizes = partition_sizes(world_set, num_partitions=7, scheme="iid")
    assert max(sizes) - min(sizes) <= 1
    # IID shuffles before sharding: even a label-sorted set gives mixed shares.
    sorted_set = world_set.select(np.argsort(np.asarray(world_set["label"]), kind="stable"))
    assert label_tv(shares(sorted_set, 4, scheme="iid"), 5) < 0.1


def test_dirichlet_skews_labels_more_than_iid(world_set: Dataset) -> None:
    iid = label_tv(shares(world_set, 5, scheme="iid", seed=3), 5)
    skewed = label_tv(shares(world_set, 5, scheme="dirichlet", alpha=0.1, seed=3), 5)
    mild = label_tv(shares(world_set, 5, scheme="dirichlet", alpha=100.0, seed=3), 5)
    assert iid < 0.08
    assert skewed > 0.3
    assert skewed > 3 * iid
    assert mild < skewed


def test_dirichlet_respects_min_partition_size(world_set: Dataset) -> None:
    sizes = partition_sizes(
        world_set, num_partitions=8, scheme="dirichlet", alpha=0.2, min_partition_size=40
    )
    assert min(sizes) >= 40


def test_same_seed_same_share_and_other_seed_differs(world_set: Dataset) -> None:
    kw = {"num_partitions": 4, "partition_id": 2, "scheme": "dirichlet", "alpha": 0.5}
    a = partition(world_set, seed=5, **kw)["index"]  # type: ignore[arg-type]
    b = partition(world_set, seed=5, **kw)["index"]  # type: ignore[arg-type]
    c = partition(world_set, seed=6, **kw)["index"]  # type: ignore[arg-type]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a), np.sort(c))


@pytest.mark.parametrize("task", TASKS)
def test_every_task_set_partitions_by_label(task: str, tmp_path: Path) -> None:
    """Dirichlet shares of each task's set cover it once and skew its labels; IID's do not."""
    ds = private_dataset(WorldConfig(), task, size=200, cache_dir=tmp_path)
    num_classes = int(np.max(ds["label"])) + 1
    skewed = shares(ds, 3, scheme="dirichlet", alpha=0.1)
    assert sorted(np.concatenate([p["index"] for p in skewed]).tolist()) == sorted(
        np.asarray(ds["index"]).tolist()
    )
    assert all(p.column_names == ds.column_names for p in skewed)
    assert all(p.format["type"] == "numpy" for p in skewed)
    iid = label_tv(shares(ds, 3, scheme="iid"), num_classes)
    assert label_tv(skewed, num_classes) > max(0.3, 3 * iid)


def test_user_split_is_disjoint_seeded_and_sized(world_set: Dataset) -> None:
    kw = {"num_partitions": 3, "partition_id": 1, "scheme": "dirichlet", "alpha": 0.5}
    split = user_split(world_set, test_fraction=0.25, **kw)  # type: ignore[arg-type]
    share = partition(world_set, **kw)  # type: ignore[arg-type]
    train = set(np.asarray(split["train"]["index"]).tolist())
    test = set(np.asarray(split["test"]["index"]).tolist())
    assert not train & test
    assert train | test == set(np.asarray(share["index"]).tolist())
    assert abs(len(test) - 0.25 * len(share)) <= 1
    again = user_split(world_set, test_fraction=0.25, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(again["test"]["index"], split["test"]["index"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"scheme": "shard"}, "'shard'; known schemes: ('iid', 'dirichlet')"),
        ({"partition_id": 4}, "partition_id=4"),
        ({"partition_id": -1}, "partition_id=-1"),
        ({"num_partitions": 0, "partition_id": 0}, "num_partitions must be a positive int, got 0"),
        ({"num_partitions": 101, "partition_id": 0}, "num_partitions=101"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0, got 0.0"),
        ({"scheme": "dirichlet", "by": "colour"}, "by='colour'"),
        ({"scheme": "dirichlet", "min_partition_size": 30}, "min_partition_size=30"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"num_partitions": 4, "partition_id": 0, **kwargs}
    with pytest.raises(ValueError, match=re.escape(needle)):
        partition(labels_only(100), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_user_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {fraction}")):
        user_split(labels_only(50), num_partitions=2, partition_id=0, test_fraction=fraction)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(20, 400),
    num_partitions=st.integers(1, 10),
    seed=st.integers(0, 10_000),
)
def test_iid_property(n: int, num_partitions: int, seed: int) -> None:
    sizes = partition_sizes(labels_only(n, seed=seed), num_partitions=num_partitions, seed=seed)
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=20, deadline=None)
@given(
    num_partitions=st.integers(2, 8),
    alpha=st.floats(0.01, 10.0),
    seed=st.integers(0, 10_000),
)
def test_dirichlet_property(num_partitions: int, alpha: float, seed: int) -> None:
    ds = labels_only(300, seed=seed)
    kw = {"scheme": "dirichlet", "alpha": alpha, "seed": seed, "min_partition_size": 0}
    parts = shares(ds, num_partitions, **kw)
    indices = np.concatenate([p["index"] for p in parts])
    assert sorted(indices.tolist()) == list(range(300))


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
def test_unreachable_dirichlet_gives_a_clear_error() -> None:
    # Five classes at alpha=0.01 go almost whole to one user each: 8 users cannot all get 30.
    ds = labels_only(300)
    kw = {"num_partitions": 8, "scheme": "dirichlet", "alpha": 0.01, "min_partition_size": 30}
    with pytest.raises(ValueError, match=re.escape("alpha=0.01 and min_partition_size=30")):
        partition(ds, partition_id=0, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Raise alpha"):  # not memoised half-done
        partition(ds, partition_id=1, **kw)  # type: ignore[arg-type]
    sizes = partition_sizes(ds, num_partitions=3, scheme="dirichlet", alpha=0.5)
    assert min(sizes) >= 10  # the default minimum holds when it can


def test_share_keeps_the_format_it_was_asked_with(world_set: Dataset) -> None:
    numpy_share = partition(world_set, num_partitions=2, partition_id=0)
    torch_share = partition(world_set.with_format("torch"), num_partitions=2, partition_id=0)
    assert numpy_share.format["type"] == "numpy"
    assert torch_share.format["type"] == "torch"
    np.testing.assert_array_equal(numpy_share[:]["index"], torch_share[:]["index"].numpy())
