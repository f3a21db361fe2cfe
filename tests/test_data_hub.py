"""Named real data sets read from local files the tests write, with the Hub's column names."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from fedmuscle_flwr.data.batches import to_batch
from fedmuscle_flwr.data.hub import (
    HUB_DATASETS,
    VOC_CLASSES,
    DatasetUnavailableError,
    list_hub_datasets,
    load_hub_dataset,
    mask_ids,
    voc_palette,
)
from fedmuscle_flwr.data.partition import partition


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def palette_png(ids: np.ndarray) -> bytes:
    """A paletted PNG whose pixel values are the class ids, as VOC ships its masks."""
    img = PILImage.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    img.putpalette(voc_palette().ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_struct(images: list[np.ndarray]) -> pa.Array:
    """Images the way Hub parquet exports store them: {bytes, path} structs."""
    return pa.array([{"bytes": png(a), "path": None} for a in images])


def rgb(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def hf_cache(tmp_path: Path) -> str:
    return str(tmp_path / "hf-cache")


def test_registry_lists_names_and_rejects_unknown() -> None:
    names = list_hub_datasets()
    assert {"cifar100", "voc", "ag_news"} <= set(names)
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'; known: .*cifar100"):
        load_hub_dataset("imagenet", data_files="x.parquet")


def test_cifar100_from_raw_parquet(tmp_path: Path, hf_cache: str) -> None:
    # Raw pyarrow file: no Hugging Face metadata, images as {bytes, path} structs.
    table = pa.table(
        {
            "img": image_struct(rgb(6)),
            "fine_label": pa.array([3, 99, 0, 42, 3, 7], pa.int64()),
            "coarse_label": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        }
    )
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path)
    ds = load_hub_dataset("cifar100", data_files=str(path), cache_dir=hf_cache)
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], Image)
    assert isinstance(ds.features["label"], ClassLabel) and ds.features["label"].num_classes == 100
    assert ds["label"][:] == [3, 99, 0, 42, 3, 7]
    batch = to_batch(ds[:4])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    np.testing.assert_allclose(batch["image"][0].permute(1, 2, 0).numpy() * 255, rgb(1)[0])
    coarse = load_hub_dataset("cifar100-coarse", data_files=str(path), cache_dir=hf_cache)
    assert coarse["label"][:] == [1, 2, 3, 4, 5, 6]


def test_cifar10_from_datasets_parquet_with_split_dict(tmp_path: Path, hf_cache: str) -> None:
    feats = Features(
        {"img": Image(), "label": ClassLabel(names=["a"] * 0 or [str(i) for i in range(10)])}
    )
    for split, n in (("train", 5), ("test", 3)):
        imgs = [PILImage.fromarray(a) for a in rgb(n, size=20, seed=n)]
        Dataset.from_dict({"img": imgs, "label": list(range(n))}, features=feats).to_parquet(
            tmp_path / f"{split}.parquet"
        )
    files = {s: str(tmp_path / f"{s}.parquet") for s in ("train", "test")}
    test = load_hub_dataset("cifar10", split="test", data_files=files, cache_dir=hf_cache)
    assert len(test) == 3
    # The file's own ClassLabel is kept.
    assert test.features["label"].names[:3] == ["0", "1", "2"]
    batch = to_batch(test[:3], image_size=32)
    assert batch["image"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="split 'val' not in data_files"):
        load_hub_dataset("cifar10", split="val", data_files=files, cache_dir=hf_cache)


def test_ag_news_text_and_class_names(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "ag.parquet"
    pq.write_table(
        pa.table({"text": ["stocks fell", "a goal", "new chip"], "label": [2, 1, 3]}), path
    )
    ds = load_hub_dataset("ag_news", data_files=[str(path)], cache_dir=hf_cache)
    assert ds.column_names == ["text", "label"]
    assert ds.features["label"].names == ["World", "Sports", "Business", "Sci/Tech"]
    batch = to_batch(ds[:3])
    assert batch["text"] == ["stocks fell", "a goal", "new chip"]
    assert batch["label"].tolist() == [2, 1, 3]


def voc_masks() -> list[np.ndarray]:
    a = np.zeros((24, 24), np.uint8)
    a[2:10, 2:10] = 15  # person
    a[12:14, 12:14] = 8  # cat, smaller
    a[10, :] = 255  # void boundary
    b = np.zeros((24, 24), np.uint8)  # background only
    c = np.full((24, 24), 3, np.uint8)  # bird everywhere
    return [a, b, c]


def write_voc(path: Path, *, colour_masks: bool = False) -> None:
    encode = (lambda m: png(voc_palette()[m])) if colour_masks else palette_png
    masks = [{"bytes": encode(m), "path": None} for m in voc_masks()]
    pq.write_table(pa.table({"image": image_struct(rgb(3, 24)), "mask": pa.array(masks)}), path)


@pytest.mark.parametrize("colour_masks", [False, True])
def test_voc_segmentation(tmp_path: Path, hf_cache: str, colour_masks: bool) -> None:
    path = tmp_path / "voc.parquet"
    write_voc(path, colour_masks=colour_masks)
    ds = load_hub_dataset("voc", data_files=str(path), cache_dir=hf_cache)
    assert set(ds.column_names) == {"image", "mask", "label"}
    assert ds.features["label"].names == list(VOC_CLASSES)
    assert ds["label"][:] == [15, 0, 3]  # dominant object; 0 when there is none
    batch = to_batch(ds[:3])
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (3, 24, 24)
    for got, want in zip(batch["mask"], voc_masks(), strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    resized = to_batch(ds[:3], image_size=12)
    assert resized["image"].shape == (3, 3, 12, 12) and resized["mask"].shape == (3, 12, 12)
    assert set(np.unique(resized["mask"].numpy())) <= {0, 3, 8, 15, 255}


def test_voc_multilabel_from_masks(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "voc.parquet"
    write_voc(path)
    ds = load_hub_dataset("voc-multilabel", data_files=str(path), cache_dir=hf_cache)
    assert set(ds.column_names) == {"image", "labels", "label"}
    labels = to_batch(ds[:3])["labels"]
    assert labels.dtype == torch.float32 and labels.shape == (3, 20)
    assert [np.flatnonzero(r).tolist() for r in labels.numpy()] == [[7, 14], [], [2]]
    coloured = voc_palette()[voc_masks()[0]]
    np.testing.assert_array_equal(mask_ids(coloured), voc_masks()[0])


def test_public_flickr_takes_first_caption(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "flickr.parquet"
    table = pa.table(
        {
            "image": image_struct(rgb(2)),
            "caption": [["a dog runs", "dog"], ["two people", "people"]],
            "img_id": ["1", "2"],
        }
    )
    pq.write_table(table, path)
    ds = load_hub_dataset("flickr30k", data_files=str(path), cache_dir=hf_cache)
    assert set(ds.column_names) == {"image", "text", "index"}
    batch = to_batch(ds[:2])
    assert batch["text"] == ["a dog runs", "two people"]
    assert batch["index"].tolist() == [0, 1]


def test_data_dir_prefers_files_of_the_split(tmp_path: Path, hf_cache: str) -> None:
    for split, labels in (("train", [0, 1, 2, 3]), ("test", [9, 9])):
        (tmp_path / split).mkdir()
        pq.write_table(
            pa.table({"image": image_struct(rgb(len(labels))), "label": labels}),
            tmp_path / split / "part-0.parquet",
        )
    ds = load_hub_dataset("mnist", split="test", data_dir=tmp_path)
    assert ds["label"][:] == [9, 9]
    assert ds.features["label"].names == list("0123456789")


def test_data_dir_imagefolder(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i, arr in enumerate(rgb(2, seed=len(cls))):
            PILImage.fromarray(arr).save(tmp_path / "train" / cls / f"{i}.png")
    ds = load_hub_dataset("cifar10", data_dir=tmp_path)
    assert len(ds) == 4 and set(ds.column_names) == {"image", "label"}
    assert sorted(ds["label"][:]) == [0, 0, 1, 1]


def test_partition_a_loaded_set(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "ag.parquet"
    pq.write_table(
        pa.table({"text": [f"t{i}" for i in range(40)], "label": [i % 4 for i in range(40)]}), path
    )
    ds = load_hub_dataset("ag_news", data_files=str(path), cache_dir=hf_cache)
    share = partition(ds, num_partitions=4, partition_id=1, scheme="dirichlet", alpha=1.0)
    assert 0 < len(share) < 40 and share.column_names == ["text", "label"]


def test_missing_local_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "train.parquet"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        load_hub_dataset("cifar100", data_files=str(missing))
    assert "uoft-cs/cifar100" in str(info.value) and "fine_label" in str(info.value)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        load_hub_dataset("voc", data_dir=tmp_path / "no-such-dir")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "*.parquet"))):
        load_hub_dataset("voc", data_files=str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        load_hub_dataset("voc", data_dir=tmp_path / "empty")


def test_wrong_columns_are_named(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sentence": ["x"], "label": [0]}), path)
    with pytest.raises(ValueError, match=r"column 'text' \(or 'text'\); the data has \['sentence'"):
        load_hub_dataset("ag_news", data_files=str(path), cache_dir=hf_cache)


def test_hub_without_network_explains_what_to_do(hf_cache: str) -> None:
    with pytest.raises(DatasetUnavailableError, match="pass data_files= or data_dir="):
        load_hub_dataset("ag_news", cache_dir=hf_cache)


def test_every_spec_is_coherent() -> None:
    for name, spec in HUB_DATASETS.items():
        assert spec.name == name
        assert spec.task in {
            "public",
            "image-classification",
            "multi-label-classification",
            "semantic-segmentation",
            "text-classification",
        }
        if spec.class_names:
            assert len(spec.class_names) == spec.num_classes
