"""Tests of the offline real-data federation (fedmuscle_flwr.data.real).

They read the Debian packages of .ci/apt-packages.txt and skip, naming the install
command, where a package is absent. Emoji are rendered once per module into a temporary
cache; Fashion-MNIST and WordNet are read with small caps.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmuscle_flwr.data.real import (
    APT_PACKAGES,
    EMOJI_LABELS,
    REAL_DATASETS,
    REAL_TASK_DATASETS,
    TASKS,
    MissingDebianPackageError,
    RealDataConfig,
    load_real_dataset,
    load_real_private,
    load_real_public,
    real_class_names,
    real_datasets,
    real_num_classes,
)
from fedmuscle_flwr.data.real.debian import (
    EMOJI_FONT,
    EMOJI_TEST,
    FASHION_MNIST_DIR,
    WORDNET_DIR,
    DebianPath,
    apt_command,
    debian_file,
)
from fedmuscle_flwr.data.real.emoji import (
    EmojiSet,
    emoji_multi_hot,
    foreground_masks,
    load_emoji,
    parse_emoji_test,
    render_emoji,
    skin_tone_free_name,
    split_emoji,
)
from fedmuscle_flwr.data.real.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    read_idx,
    resize_grey,
)
from fedmuscle_flwr.data.real.wordnet import (
    DEFAULT_WORDNET_CLASSES,
    LEXNAMES,
    parse_wordnet,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def _require(*specs: DebianPath) -> None:
    for spec in specs:
        try:
            debian_file(spec)
        except MissingDebianPackageError:
            pytest.skip(f"Debian package {spec.package} absent; run: {apt_command(spec.package)}")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> RealDataConfig:
    return RealDataConfig(
        image_size=SIZE,
        cache_dir=str(tmp_path_factory.mktemp("real-cache")),
        fashion_train_size=600,
        fashion_test_size=200,
        wordnet_max_per_class=60,
    )


@pytest.fixture(scope="module")
def emoji(cfg: RealDataConfig) -> EmojiSet:
    _require(EMOJI_TEST, EMOJI_FONT)
    return load_emoji(SIZE, cache_dir=cfg.cache_dir)


# --------------------------------------------------------------------------- packaging
def test_ci_apt_list_matches_the_packages_the_code_reads() -> None:
    listed = (REPO / ".ci" / "apt-packages.txt").read_text().split()
    assert listed == list(APT_PACKAGES)
    specs = {EMOJI_FONT, EMOJI_TEST, FASHION_MNIST_DIR, WORDNET_DIR}
    assert {s.package for s in specs} == set(APT_PACKAGES)
    for spec in REAL_DATASETS.values():
        assert set(spec.packages) <= set(APT_PACKAGES)


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("emoji-public", "unicode-data"),
        ("fashion-mnist", "dataset-fashion-mnist"),
        ("wordnet-lexnames", "wordnet-base"),
        ("emoji-multilabel", "unicode-data"),
        ("emoji-segmentation", "unicode-data"),
    ],
)
def test_missing_package_error_names_the_apt_command(
    name: str, package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDMUSCLE_DEBIAN_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_real_dataset(name, RealDataConfig(cache_dir=str(tmp_path / "cache")))
    assert isinstance(err.value, MissingDebianPackageError)
    assert f"apt-get install -y --no-install-recommends {package}" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_font_alone_names_the_font_package(tmp_path: Path) -> None:
    _require(EMOJI_TEST)
    test_file = tmp_path / EMOJI_TEST.path
    test_file.parent.mkdir(parents=True)
    test_file.write_bytes(debian_file(EMOJI_TEST).read_bytes())
    with pytest.raises(MissingDebianPackageError, match="fonts-noto-color-emoji"):
        load_emoji(8, root=tmp_path, use_cache=False)


# --------------------------------------------------------------------------- emoji
def test_emoji_test_parse_gives_cldr_names_groups_and_code_points() -> None:
    _require(EMOJI_TEST)
    records = parse_emoji_test(debian_file(EMOJI_TEST))
    by_cp = {r.codepoints: r for r in records}
    assert by_cp["1F600"].name == "grinning face"
    assert by_cp["1F600"].char == "\U0001f600"
    assert (by_cp["1F600"].group, by_cp["1F600"].subgroup) == ("Smileys & Emotion", "face-smiling")
    massage = by_cp["1F486 1F3FF 200D 2642 FE0F"]
    assert massage.name == "man getting massage: dark skin tone"
    assert massage.char == "\U0001f486\U0001f3ff\u200d\u2642\ufe0f"
    # Every fully-qualified line, and nothing else, becomes a record.
    text = debian_file(EMOJI_TEST).read_text(encoding="utf-8")
    assert len(records) == len(re.findall(r";\s*fully-qualified\s", text))
    assert [r.emoji_id for r in records] == list(range(len(records)))
    assert len({r.group for r in records}) == 9  # "Component" has no fully-qualified lines
    assert 90 <= len({r.subgroup for r in records}) <= 110


def test_renderer_draws_non_empty_images_with_alpha_masks() -> None:
    _require(EMOJI_TEST, EMOJI_FONT)
    records = parse_emoji_test(debian_file(EMOJI_TEST))
    picks = records[:5] + records[-5:] + records[1000:1005]
    rgba = render_emoji(picks, debian_file(EMOJI_FONT), 24)
    assert rgba.shape == (len(picks), 24, 24, 4) and rgba.dtype == np.uint8
    alpha = rgba[..., 3]
    # Every emoji is drawn, and none fills the whole square (the canvas is padded).
    assert (alpha.max(axis=(1, 2)) == 255).all()
    fg = foreground_masks(rgba, threshold=127)
    np.testing.assert_array_equal(fg, alpha > 127)
    assert ((fg.mean(axis=(1, 2)) > 0.05) & (fg.mean(axis=(1, 2)) < 0.98)).all()
    # Different emoji give different pictures.
    assert len({a.tobytes() for a in rgba}) == len(picks)


def test_rendering_is_cached_and_reused(emoji: EmojiSet, cfg: RealDataConfig) -> None:
    files = list(Path(str(cfg.cache_dir)).glob(f"emoji-{SIZE}-*.npz"))
    assert len(files) == 1
    again = load_emoji(SIZE, cache_dir=cfg.cache_dir)
    np.testing.assert_array_equal(again.rgba, emoji.rgba)
    assert again.records == emoji.records
    assert emoji.rgba.shape == (len(emoji.records), SIZE, SIZE, 4)
    assert (emoji.rgba[..., 3].max(axis=(1, 2)) > 127).all()  # all non-empty at 32 px


def test_split_is_disjoint_deterministic_and_keeps_skin_tones_together(emoji: EmojiSet) -> None:
    a = split_emoji(emoji.records, seed=3, public_fraction=0.5, test_fraction=0.2)
    b = split_emoji(emoji.records, seed=3, public_fraction=0.5, test_fraction=0.2)
    for part in ("public", "train", "test"):
        np.testing.assert_array_equal(a[part], b[part])
    assert not set(a["public"]) & set(a["train"])
    assert not set(a["public"]) & set(a["test"])
    assert not set(a["train"]) & set(a["test"])
    assert sorted(np.concatenate(list(a.values()))) == list(range(len(emoji.records)))
    other = split_emoji(emoji.records, seed=4, public_fraction=0.5, test_fraction=0.2)
    assert not np.array_equal(a["public"], other["public"])
    side = {int(i): part for part, rows in a.items() for i in rows}
    keys: dict[str, set[str]] = {}
    for i, r in enumerate(emoji.records):
        keys.setdefault(skin_tone_free_name(r.name), set()).add(side[i])
    assert all(len(s) == 1 for s in keys.values())
    assert skin_tone_free_name("man getting massage: dark skin tone") == "man getting massage"
    assert skin_tone_free_name("man: red hair, light skin tone") == "man: red hair"
    assert skin_tone_free_name("flag: Italy") == "flag: Italy"


def test_public_set_pairs_images_with_cldr_captions(emoji: EmojiSet, cfg: RealDataConfig) -> None:
    pub = load_real_public(cfg, with_labels=True)
    assert {"index", "emoji_id", "image", "text", "group", "subgroup", "mask"} <= set(
        pub.column_names
    )
    ids = np.asarray(pub["emoji_id"])
    np.testing.assert_array_equal(np.asarray(pub["index"]), np.arange(len(pub)))
    assert [str(t) for t in pub["text"]] == [emoji.records[i].name for i in ids]
    rows = pub[:40]
    assert rows["image"].shape == (40, SIZE, SIZE, 3)
    # Transparent pixels show the neutral background; the mask is the alpha foreground.
    alpha = emoji.rgba[ids[:40], ..., 3]
    bg = alpha == 0
    assert (rows["image"][bg] == np.array(cfg.background)).all()
    groups = emoji.group_ids()[ids[:40]]
    np.testing.assert_array_equal(
        rows["mask"], (alpha > cfg.mask_threshold) * (groups + 1)[:, None, None]
    )
    plain = load_real_public(cfg)
    assert set(plain.column_names) == {"index", "emoji_id", "image", "text"}
    assert 1000 < len(plain) < 2600


def test_private_emoji_sets_hold_out_the_public_emoji(cfg: RealDataConfig) -> None:
    _require(EMOJI_TEST, EMOJI_FONT)
    pub_ids = set(np.asarray(load_real_public(cfg)["emoji_id"]).tolist())
    seen: dict[str, set[int]] = {}
    for task in ("multi-label-classification", "semantic-segmentation"):
        for split in ("train", "test"):
            ds = load_real_private(task, cfg, split=split)
            seen[f"{task}/{split}"] = set(np.asarray(ds["emoji_id"]).tolist())
    ml_train, ml_test = (
        seen["multi-label-classification/train"],
        seen["multi-label-classification/test"],
    )
    assert ml_train == seen["semantic-segmentation/train"]
    assert ml_test == seen["semantic-segmentation/test"]
    assert not pub_ids & ml_train and not pub_ids & ml_test and not ml_train & ml_test
    assert len(ml_test) > 100 and len(ml_train) > 3 * len(ml_test) // 2


def test_multi_label_vectors_agree_with_caption_words(emoji: EmojiSet, cfg: RealDataConfig) -> None:
    names = [
        "man getting massage: dark skin tone",
        "grinning face",
        "women holding hands",
        "kiss: woman, man",
        "rocket",
        "flag: Italy",
        "man’s shoe",
    ]
    on = [
        [k for k, v in zip(EMOJI_LABELS, row, strict=True) if v == 1]
        for row in emoji_multi_hot(names)
    ]
    assert on == [
        ["man", "skin tone"],
        ["face"],
        ["hand", "woman"],
        ["man", "woman", "kiss"],
        [],
        ["flag"],
        ["man"],
    ]
    ds = load_real_private("multi-label-classification", cfg)
    labels = np.asarray(ds["labels"])
    assert labels.dtype == np.float32 and labels.shape == (len(ds), len(EMOJI_LABELS))
    for ids, row in zip(np.asarray(ds["emoji_id"]), labels, strict=True):
        words = re.findall(r"[a-z0-9]+", emoji.records[ids].name.lower())
        text = " ".join(words)
        for k, phrases in enumerate(EMOJI_LABELS.values()):
            expected = any(p in words if " " not in p else p in text for p in phrases)
            assert row[k] == expected, (emoji.records[ids].name, list(EMOJI_LABELS)[k])
    assert (labels.sum(axis=0) > 0).all()  # every label occurs in the private set
    assert real_num_classes("multi-label-classification", cfg) == len(EMOJI_LABELS) == 12


@pytest.mark.parametrize("mode", ["group", "binary"])
def test_segmentation_masks_are_alpha_foreground(
    emoji: EmojiSet, cfg: RealDataConfig, mode: str
) -> None:
    c = dataclasses.replace(cfg, segmentation=mode)  # type: ignore[arg-type]
    ds = load_real_private("semantic-segmentation", c, split="test")
    rows = ds[:]
    ids = rows["emoji_id"]
    fg = emoji.rgba[ids, ..., 3] > c.mask_threshold
    mask = rows["mask"]
    assert mask.shape == (len(ds), SIZE, SIZE)
    np.testing.assert_array_equal(mask > 0, fg)
    if mode == "binary":
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert real_class_names("semantic-segmentation", c) == ["background", "foreground"]
    else:
        group = emoji.group_ids()[ids]
        np.testing.assert_array_equal(mask, fg * (group + 1)[:, None, None])
        np.testing.assert_array_equal(rows["label"], group)
        names = real_class_names("semantic-segmentation", c)
        assert names == ["background", *emoji.groups] and len(names) == 10
        assert int(mask.max()) < len(names)


# --------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_files_have_ten_balanced_classes() -> None:
    _require(FASHION_MNIST_DIR)
    labels = read_idx(debian_file(FASHION_MNIST_DIR, "train-labels-idx1-ubyte.gz"), 1)
    assert labels.shape == (60000,)
    np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
    test_labels = read_idx(debian_file(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"), 1)
    np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)


def test_fashion_mnist_dataset_shapes_and_labels(cfg: RealDataConfig) -> None:
    _require(FASHION_MNIST_DIR)
    train = load_real_private("image-classification", cfg)
    test = load_real_private("image-classification", cfg, split="test")
    assert (len(train), len(test)) == (600, 200)
    assert train.features["label"].names == list(FASHION_MNIST_CLASSES)
    assert real_num_classes("image-classification") == 10
    rows = train[:16]
    assert rows["image"].shape == (16, SIZE, SIZE)  # grey, repeated to RGB in batches
    assert set(np.asarray(train["label"]).tolist()) == set(range(10))
    rgb = load_real_private("image-classification", dataclasses.replace(cfg, fashion_rgb=True))[
        :16
    ]["image"]
    assert rgb.shape == (16, SIZE, SIZE, 3)
    np.testing.assert_array_equal(rgb[..., 0], rows["image"])
    np.testing.assert_array_equal(rgb[..., 2], rows["image"])


def test_idx_reader_and_resize(tmp_path: Path) -> None:
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
    path.write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(read_idx(path, 3), images)
    with pytest.raises(ValueError, match="magic"):
        read_idx(path, 1)
    flat = np.full((3, 28, 28), 77, dtype=np.uint8)
    assert (resize_grey(flat, 32) == 77).all() and resize_grey(flat, 32).shape == (3, 32, 32)
    assert (resize_grey(flat, 14) == 77).all()


# --------------------------------------------------------------------------- WordNet
def test_lexname_table_matches_the_manual_page() -> None:
    _require(WORDNET_DIR)
    page = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if not page.exists():
        pytest.skip("lexnames(5WN) manual page not installed")
    rows = re.findall(r"^(\d\d)\s+(\S+)\s", gzip.decompress(page.read_bytes()).decode(), re.M)
    assert [name for _, name in rows] == list(LEXNAMES)
    assert [int(n) for n, _ in rows] == list(range(45))


def test_wordnet_parse_gives_chosen_classes_with_glosses() -> None:
    _require(WORDNET_DIR)
    glosses = parse_wordnet(("noun",))
    entity = next(g for g in glosses if g.offset == "00001740")
    assert entity.lexname == "noun.Tops" and entity.lemmas == ("entity",)
    assert entity.gloss.startswith("that which is perceived or known or inferred")
    assert len(glosses) == 82115  # WordNet 3.0 noun synsets
    animals = parse_wordnet(("noun",), lexnames=("noun.animal",))
    assert len(animals) == 7509 and {g.lexname for g in animals} == {"noun.animal"}


def test_wordnet_dataset_is_balanced_over_the_chosen_classes(cfg: RealDataConfig) -> None:
    _require(WORDNET_DIR)
    train = load_real_private("text-classification", cfg)
    test = load_real_private("text-classification", cfg, split="test")
    k = len(DEFAULT_WORDNET_CLASSES)
    assert train.features["label"].names == list(DEFAULT_WORDNET_CLASSES)
    assert real_num_classes("text-classification", cfg) == k == 16
    np.testing.assert_array_equal(np.bincount(np.asarray(train["label"]), minlength=k), [48] * k)
    np.testing.assert_array_equal(np.bincount(np.asarray(test["label"]), minlength=k), [12] * k)
    texts = [str(t) for t in train["text"]] + [str(t) for t in test["text"]]
    assert all(t.strip() for t in texts)  # some glosses are one word ("loaches")
    again = load_real_private("text-classification", cfg)
    assert list(again["text"]) == list(train["text"])
    custom = dataclasses.replace(cfg, wordnet_classes=("verb.motion", "noun.animal"))
    ds = load_real_private("text-classification", custom)
    assert ds.features["label"].names == ["verb.motion", "noun.animal"]


# --------------------------------------------------------------------------- federation
def test_real_datasets_builds_every_task_by_name(cfg: RealDataConfig) -> None:
    _require(EMOJI_TEST, EMOJI_FONT, FASHION_MNIST_DIR, WORDNET_DIR)
    data = real_datasets(cfg, with_test=True)
    assert set(data) == {"public", *TASKS, *(f"{t}/test" for t in TASKS)}
    assert set(REAL_TASK_DATASETS) == set(TASKS)
    for task in TASKS:
        assert "label" in data[task].column_names and "index" in data[task].column_names
    batches = pytest.importorskip("fedmuscle_flwr.data.batches")
    pub = batches.to_batch(data["public"][:8])
    assert pub["image"].shape == (8, 3, SIZE, SIZE) and str(pub["image"].dtype) == "torch.float32"
    assert float(pub["image"].min()) >= 0.0 and float(pub["image"].max()) <= 1.0
    assert all(isinstance(t, str) for t in pub["text"]) and len(pub["text"]) == 8
    img = batches.to_batch(data["image-classification"][:8])
    assert img["image"].shape == (8, 3, SIZE, SIZE) and str(img["label"].dtype) == "torch.int64"
    ml = batches.to_batch(data["multi-label-classification"][:8])
    assert ml["labels"].shape == (8, 12) and str(ml["labels"].dtype) == "torch.float32"
    seg = batches.to_batch(data["semantic-segmentation"][:8])
    assert seg["mask"].shape == (8, SIZE, SIZE) and str(seg["mask"].dtype) == "torch.int64"
    txt = batches.to_batch(data["text-classification"][:8])
    assert len(txt["text"]) == 8 and txt["label"].shape == (8,)


def test_unknown_names_and_bad_config_fail_clearly() -> None:
    with pytest.raises(KeyError, match="fashion-mnist"):
        load_real_dataset("cifar-100")
    with pytest.raises(ValueError, match="known tasks"):
        load_real_private("detection")
    with pytest.raises(ValueError, match="public_fraction"):
        RealDataConfig(public_fraction=1.0)
    with pytest.raises(ValueError, match="unknown lexnames"):
        RealDataConfig(wordnet_classes=("noun.pokemon",))
    with pytest.raises(ValueError, match="segmentation"):
        RealDataConfig(segmentation="instance")  # type: ignore[arg-type]


def test_config_from_run_config_values() -> None:
    c = RealDataConfig.from_mapping(
        {
            "image-size": 48,
            "wordnet-classes": "noun.animal, noun.plant",
            "background": "255,255,255",
        }
    )
    assert c.image_size == 48
    assert c.wordnet_classes == ("noun.animal", "noun.plant")
    assert c.background == (255, 255, 255)
    assert RealDataConfig.from_mapping({"wordnet_max_per_class": 0}).wordnet_max_per_class is None
    with pytest.raises(ValueError, match="unknown real-data option"):
        RealDataConfig.from_mapping({"colour": "red"})


def test_build_dataset_matches_from_dict_and_chunks_large_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datasets import Array2D, Array3D, ClassLabel, Dataset, Features, Sequence, Value

    from fedmuscle_flwr.data.real import columns

    rng = np.random.default_rng(0)
    data: dict[str, Any] = {
        "index": np.arange(7, dtype=np.int64),
        "image": rng.integers(0, 256, (7, 4, 5, 3), dtype=np.uint8),
        "mask": rng.integers(0, 3, (7, 4, 5), dtype=np.uint8),
        "labels": rng.random((7, 2)).astype(np.float32),
        "label": rng.integers(0, 3, 7),
        "text": [f"row {i}" for i in range(7)],
    }
    feats = Features(
        {
            "index": Value("int64"),
            "image": Array3D((4, 5, 3), "uint8"),
            "mask": Array2D((4, 5), "uint8"),
            "labels": Sequence(Value("float32"), length=2),
            "label": ClassLabel(names=["a", "b", "c"]),
            "text": Value("string"),
        }
    )
    reference = Dataset.from_dict(data, features=feats).with_format("numpy")
    monkeypatch.setattr(columns, "_MAX_CHUNK_VALUES", 130)  # 2 rows of 60 values per chunk
    fast = columns.build_dataset(data, feats, fingerprint_parts=("test",))
    assert fast.features == reference.features
    assert fast.data.column("image").num_chunks == 4
    for key in feats:
        np.testing.assert_array_equal(fast[:][key], reference[:][key])
    np.testing.assert_array_equal(fast[[6, 1]]["image"], data["image"][[6, 1]])
