"""The procedural world: determinism, consistency of every view, datasets, cache, batches."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmuscle_flwr.data import world
from fedmuscle_flwr.data.batches import CollatedSplit, collate, to_batch
from fedmuscle_flwr.data.world import (
    COLOURS,
    KIND_SYNONYMS,
    KINDS,
    POSITIONS,
    SYNONYMS_PER_KIND,
    TASKS,
    Scenes,
    WorldConfig,
    captions,
    class_names,
    generate_scenes,
    load_scenes,
    num_classes,
    private_dataset,
    public_dataset,
    scene_labels,
    world_datasets,
)
from fedmuscle_flwr.data.world.config import CAPTION_TEMPLATES, POSITION_PHRASES

COLOUR_NAMES = list(COLOURS)
# every name a caption may give a kind -> the kind
NAME_TO_KIND = {kind: kind for kind in KINDS} | {
    name: kind for kind, names in KIND_SYNONYMS.items() for name in names
}
SHAPE_RE = re.compile(
    r"a (large|small) (" + "|".join(COLOUR_NAMES) + r") (" + "|".join(NAME_TO_KIND) + r") "
    r"(at the top left|at the top right|at the top|on the left|in the centre|on the right|"
    r"at the bottom left|at the bottom right|at the bottom)"
)
PHRASE_TO_CELL = {
    "at the top left": 0,
    "at the top": 1,
    "at the top right": 2,
    "on the left": 3,
    "in the centre": 4,
    "on the right": 5,
    "at the bottom left": 6,
    "at the bottom": 7,
    "at the bottom right": 8,
}


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    return generate_scenes(WorldConfig(), "private/image-classification", 600)


def parse(caption: str) -> list[tuple[str, str, str, int]]:
    """(size, colour, kind, cell) of each shape a caption names; a synonym gives its kind."""
    return [(s, c, NAME_TO_KIND[k], PHRASE_TO_CELL[p]) for s, c, k, p in SHAPE_RE.findall(caption)]


def assert_consistent(sc: Scenes, cfg: WorldConfig) -> None:
    labels = scene_labels(sc, cfg)
    for i, caption in enumerate(captions(sc)):
        rows = [r for r in sc.shapes[i] if r[0] >= 0]
        assert cfg.min_shapes <= len(rows) <= cfg.max_shapes
        kinds = {int(r[0]) for r in rows}
        # The multi-label set is exactly the kinds visible in the mask.
        mask_kinds = {int(v) - 1 for v in np.unique(sc.masks[i]) if v > 0}
        assert mask_kinds == kinds, (i, mask_kinds, kinds)
        for r in rows:  # every shape, not just every kind, keeps visible pixels
            assert (sc.masks[i] == r[0] + 1).sum() >= cfg.min_visible_pixels
        # The caption names every shape: size, colour, kind and position, in drawing order.
        parsed = parse(caption)
        expected = [
            ("large" if r[2] == 1 else "small", COLOUR_NAMES[r[1]], KINDS[r[0]], int(r[3]))
            for r in rows
        ]
        assert parsed == expected, (caption, expected)
        assert caption.count(" large ") == 1
        # The label can be read from the caption alone.
        size, colour, kind, cell = parsed[0]
        from_caption = {
            "kind": KINDS.index(kind),
            "colour": COLOUR_NAMES.index(colour),
            "position": cell,
            "count": len(parsed) - cfg.min_shapes,
        }[cfg.label_by]
        assert labels[i] == from_caption
        assert size == "large"


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"image_size": 4}, "image_size"),
        ({"num_kinds": 7}, "num_kinds"),
        ({"num_colours": 0}, "num_colours"),
        ({"min_shapes": 3, "max_shapes": 2}, "min_shapes"),
        ({"max_shapes": 7}, "max_shapes=7"),
        ({"small_radius": 0.3, "large_radius": 0.2}, "small_radius"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"label_by": "shape"}, "'shape'"),
        ({"public_size": -1}, "public_size=-1"),
        ({"caption_synonyms": 1.5}, "caption_synonyms"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        WorldConfig(**kwargs)  # type: ignore[arg-type]


def test_default_class_counts() -> None:
    cfg = WorldConfig()
    assert num_classes(cfg, "image-classification") == 5
    assert num_classes(cfg, "text-classification") == 5
    assert num_classes(cfg, "multi-label-classification") == 5
    assert class_names(cfg, "semantic-segmentation") == ["background", *KINDS[:5]]
    assert num_classes(WorldConfig(label_by="position"), "text-classification") == 9
    assert class_names(WorldConfig(label_by="count"), "image-classification") == ["1", "2", "3"]
    with pytest.raises(ValueError, match="detection"):
        num_classes(cfg, "detection")


# --------------------------------------------------------------------------- synonyms
def test_each_kind_has_its_own_synonyms_and_none_is_another_caption_word() -> None:
    assert set(KIND_SYNONYMS) == set(KINDS)
    assert all(len(names) == SYNONYMS_PER_KIND for names in KIND_SYNONYMS.values())
    synonyms = [name for names in KIND_SYNONYMS.values() for name in names]
    assert len(set(synonyms)) == len(synonyms)
    other_words = {"a", "large", "small", "and", *KINDS, *COLOUR_NAMES}
    other_words |= {w for phrase in (*POSITION_PHRASES, *CAPTION_TEMPLATES) for w in phrase.split()}
    assert not other_words & set(synonyms)


def test_caption_synonyms_rename_that_share_of_shapes_and_change_nothing_else() -> None:
    plain = generate_scenes(WorldConfig(), "public", 600)
    renamed = generate_scenes(WorldConfig(caption_synonyms=0.3), "public", 600)
    for name in ("images", "masks", "shapes", "templates"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(renamed, name))
    present = plain.shapes[:, :, 0] >= 0
    assert not plain.names.any()  # 0: every kind by its own name, the captions of old
    assert not renamed.names[~present].any()
    share = (renamed.names[present] > 0).mean()
    assert 0.25 < share < 0.35, share
    assert set(np.unique(renamed.names[present])) == set(range(SYNONYMS_PER_KIND + 1))
    words = " ".join(captions(plain)).split()
    assert not set(words) & {n for names in KIND_SYNONYMS.values() for n in names}
    old, new = captions(plain), captions(renamed)
    assert sum(a != b for a, b in zip(old, new, strict=True)) > 200  # about half
    assert [parse(c) for c in old] == [parse(c) for c in new]  # same scenes, other words


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_arrays_and_different_seed_different() -> None:
    cfg = WorldConfig(seed=7)
    a = generate_scenes(cfg, "public", 300)
    b = generate_scenes(cfg, "public", 300)
    for name in ("images", "masks", "shapes", "templates", "names"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = generate_scenes(WorldConfig(seed=8), "public", 300)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.shapes, c.shapes)


def test_streams_are_disjoint() -> None:
    cfg = WorldConfig()
    public = generate_scenes(cfg, "public", 200).images.reshape(200, -1)
    private = generate_scenes(cfg, "private/image-classification", 200).images.reshape(200, -1)
    public_rows = {row.tobytes() for row in public}
    assert not any(row.tobytes() in public_rows for row in private)


def test_smaller_set_is_prefix_of_larger() -> None:
    cfg = WorldConfig()
    small = generate_scenes(cfg, "public", 100)
    large = generate_scenes(cfg, "public", 300)  # more than one chunk
    np.testing.assert_array_equal(small.images, large.images[:100])
    np.testing.assert_array_equal(small.shapes, large.shapes[:100])
    assert len(generate_scenes(cfg, "public", 0)) == 0


# --------------------------------------------------------------------------- consistency
def test_default_world_is_consistent(scenes: Scenes) -> None:
    assert scenes.images.shape == (600, 32, 32, 3)
    assert scenes.images.dtype == np.uint8
    assert_consistent(scenes, WorldConfig())


def test_every_kind_colour_and_position_occurs(scenes: Scenes) -> None:
    present = scenes.shapes[scenes.shapes[:, :, 0] >= 0]
    assert set(present[:, 0]) == set(range(5))
    assert set(present[:, 1]) == set(range(6))
    assert set(present[:, 3]) == set(range(len(POSITIONS)))
    assert set((scenes.shapes[:, :, 0] >= 0).sum(axis=1)) == {1, 2, 3}


def test_image_agrees_with_mask(scenes: Scenes) -> None:
    # Shapes are saturated colours on a dark background: the mask picks the bright pixels.
    brightness = scenes.images.max(axis=-1).astype(np.float32) / 255
    assert np.median(brightness[scenes.masks > 0]) > 0.75
    assert np.median(brightness[scenes.masks == 0]) < 0.4
    # A shape's pixels carry its colour: the mean is closer to it than to any other colour.
    palette = np.asarray(list(COLOURS.values()))
    checked = 0
    for i in range(100):
        kinds = [int(r[0]) for r in scenes.shapes[i] if r[0] >= 0]
        for row in scenes.shapes[i]:
            if row[0] < 0 or kinds.count(int(row[0])) > 1:
                continue  # shapes of one kind share a mask id
            pix = scenes.images[i][scenes.masks[i] == row[0] + 1].astype(np.float32) / 255
            nearest = np.argmin(((palette - pix.mean(axis=0)) ** 2).sum(axis=1))
            assert nearest == row[1]
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("label_by", ["colour", "position", "count"])
def test_label_by_is_readable_from_caption(label_by: str) -> None:
    cfg = WorldConfig(label_by=label_by)  # type: ignore[arg-type]
    assert_consistent(generate_scenes(cfg, "private/text-classification", 256), cfg)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    image_size=st.sampled_from([16, 24, 40]),
    num_kinds=st.integers(1, len(KINDS)),
    max_shapes=st.integers(1, 4),
    label_by=st.sampled_from(["kind", "colour", "position", "count"]),
    caption_synonyms=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_any_world_is_consistent(
    seed: int,
    image_size: int,
    num_kinds: int,
    max_shapes: int,
    label_by: str,
    caption_synonyms: float,
) -> None:
    cfg = WorldConfig(
        seed=seed,
        image_size=image_size,
        num_kinds=num_kinds,
        max_shapes=max_shapes,
        label_by=label_by,  # type: ignore[arg-type]
        caption_synonyms=caption_synonyms,
    )
    assert_consistent(generate_scenes(cfg, "public", 40), cfg)


# --------------------------------------------------------------------------- datasets
def test_private_datasets_have_the_batch_columns(tmp_path: Path) -> None:
    cfg = WorldConfig(private_size=64, public_size=32)
    sets = world_datasets(cfg, cache_dir=tmp_path)
    assert set(sets) == {"public", *TASKS}
    expected = {
        "public": {"index", "image", "text"},
        "image-classification": {"index", "image", "label"},
        "multi-label-classification": {"index", "image", "labels", "label"},
        "semantic-segmentation": {"index", "image", "mask", "label"},
        "text-classification": {"index", "text", "label"},
    }
    for name, ds in sets.items():
        assert set(ds.column_names) == expected[name], name
        assert len(ds) == (32 if name == "public" else 64)
    ml = sets["multi-label-classification"]
    seg = sets["semantic-segmentation"]
    assert ml.features["label"].names == list(KINDS[:5])
    # Views of one scene agree: multi-hot == kinds in the mask, for the same stream.
    scenes = load_scenes(cfg, "private/multi-label-classification", 64, cache_dir=tmp_path)
    for i in range(64):
        kinds = {int(v) - 1 for v in np.unique(scenes.masks[i]) if v > 0}
        assert set(np.flatnonzero(ml[i]["labels"])) == kinds
    # Each task has its own stream: segmentation images are not the multi-label ones.
    assert not np.array_equal(seg[:8]["image"], ml[:8]["image"])


def test_public_pairs_image_and_caption_of_same_scene(tmp_path: Path) -> None:
    cfg = WorldConfig()
    ds = public_dataset(cfg, size=40, cache_dir=tmp_path)
    scenes = load_scenes(cfg, "public", 40, cache_dir=tmp_path)
    np.testing.assert_array_equal(ds[:]["image"], scenes.images)
    assert list(ds[:]["text"]) == captions(scenes)
    np.testing.assert_array_equal(ds[:]["index"], np.arange(40))


# --------------------------------------------------------------------------- cache
def test_second_call_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = WorldConfig()
    first = load_scenes(cfg, "public", 50, cache_dir=tmp_path)
    path = world.cache_path(cfg, "public", 50, tmp_path)
    assert path.exists()
    mtime = path.stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> Scenes:
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(world.cache, "generate_scenes", boom)
    second = load_scenes(cfg, "public", 50, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.shapes, second.shapes)
    assert path.stat().st_mtime_ns == mtime
    # Labels are not part of what is cached: another label_by reuses the same file.
    assert world.cache_path(WorldConfig(label_by="colour"), "public", 50, tmp_path) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMUSCLE_CACHE", str(tmp_path))
    assert world.default_cache_dir() == tmp_path / "world"
    public_dataset(WorldConfig(), size=10)
    assert len(list((tmp_path / "world").glob("public-10-*.npz"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-shape"])
def test_corrupted_cache_is_regenerated_with_warning(tmp_path: Path, damage: str) -> None:
    cfg = WorldConfig()
    good = load_scenes(cfg, "public", 30, cache_dir=tmp_path)
    path = world.cache_path(cfg, "public", 30, tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, images=np.zeros((3, 2), np.uint8))  # path ends in .npz: same file
    with pytest.warns(RuntimeWarning, match="regenerating"):
        again = load_scenes(cfg, "public", 30, cache_dir=tmp_path)
    np.testing.assert_array_equal(good.images, again.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_scenes(cfg, "public", 30, cache_dir=tmp_path)  # the file was rewritten


def test_use_cache_false_writes_nothing(tmp_path: Path) -> None:
    load_scenes(WorldConfig(), "public", 10, cache_dir=tmp_path, use_cache=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- batches
@pytest.mark.parametrize("task", TASKS)
def test_batches_follow_the_conventions(task: str, tmp_path: Path) -> None:
    cfg = WorldConfig()
    ds = private_dataset(cfg, task, size=16, cache_dir=tmp_path)
    batch = to_batch(ds[:5])
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (5,)
    assert int(batch["label"].max()) < num_classes(cfg, "image-classification")
    if task != "text-classification":
        img = batch["image"]
        assert img.dtype == torch.float32 and img.shape == (5, 3, 32, 32)
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    else:
        assert isinstance(batch["text"], list) and all(isinstance(t, str) for t in batch["text"])
    if task == "multi-label-classification":
        assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (5, 5)
    if task == "semantic-segmentation":
        assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (5, 32, 32)
        assert int(batch["mask"].max()) <= 5
    rows = collate([ds[i] for i in range(5)])
    assert rows.keys() == batch.keys()
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(rows[key], value)
        else:
            assert rows[key] == value


@pytest.mark.parametrize("task", [*TASKS, "public"])
@pytest.mark.parametrize("max_rows", [0, 100])
def test_collated_split_equals_converting_each_batch(
    task: str, max_rows: int, tmp_path: Path
) -> None:
    cfg = WorldConfig()
    if task == "public":
        ds = public_dataset(cfg, size=40, cache_dir=tmp_path)
    else:
        ds = private_dataset(cfg, task, size=40, cache_dir=tmp_path)
    split = CollatedSplit(ds, image_size=32, max_rows=max_rows)
    for rows in ([3, 0, 39, 3], list(range(40)), [17]):
        expected = to_batch(ds[rows], image_size=32)
        got = split.take(rows)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key


def test_collated_split_converts_in_chunks(tmp_path: Path) -> None:
    ds = private_dataset(WorldConfig(), "semantic-segmentation", size=30, cache_dir=tmp_path)
    whole = CollatedSplit(ds, image_size=32)._collate_all(chunk=7)
    assert whole is not None
    assert whole["image"].shape[0] == whole["mask"].shape[0] == 30
    assert torch.equal(whole["mask"][20:30], to_batch(ds[20:30], image_size=32)["mask"])


def test_public_batch(tmp_path: Path) -> None:
    batch = to_batch(public_dataset(WorldConfig(), size=8, cache_dir=tmp_path)[:8])
    assert batch["image"].shape == (8, 3, 32, 32)
    assert len(batch["text"]) == 8
    assert batch["index"].tolist() == list(range(8))
