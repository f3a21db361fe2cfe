"""Data sources as plug-ins: the registry, the hub source on local files, a custom source."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from fedmuscle_flwr._registry import UnknownNameError
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.data import DataSource, get_data_source, list_data_sources
from fedmuscle_flwr.data.sources import SOURCES, register_data_source
from fedmuscle_flwr.data.users import load_user_data
from fedmuscle_flwr.federation import FederationError, load_federation
from fedmuscle_flwr.preflight import check_run
from tests.test_data_hub import image_struct, rgb

HUB_FEDERATION = """
[data]
image-size = 32
test-fraction = 0.25

[data.sources]
image-classification = { name = "cifar10", data-files = "cifar.parquet", cache-dir = "hf" }
text-classification = { name = "ag_news", data-files = ["news.parquet"], cache-dir = "hf" }
public = { name = "flickr30k", data-files = "flickr.parquet", cache-dir = "hf" }

[[users]]
id = "cnn-a"
model = "small-cnn"
task = "image-classification"
partition = "iid"
[users.model-config]
image_size = 32
channels = [8, 16, 32, 32]
stem_width = 8

[[users]]
id = "cnn-b"
model = "small-cnn"
task = "image-classification"
partition = "iid"
[users.model-config]
image_size = 32
channels = [8, 16, 32, 32]
stem_width = 8

[[users]]
id = "bert-news"
model = "bert"
task = "text-classification"
partition = "iid"
[users.model-config]
vocab_size = 512
hidden_size = 32
num_layers = 1
num_heads = 2
max_length = 24
"""


@pytest.fixture
def hub_federation(tmp_path: Path) -> Path:
    """A federation whose tasks name real data sets, as local parquet files beside it."""
    pq.write_table(
        pa.table({"img": image_struct(rgb(40)), "label": [i % 10 for i in range(40)]}),
        tmp_path / "cifar.parquet",
    )
    words = ["markets rally", "cup final", "new chip", "peace talks"]
    pq.write_table(
        pa.table({"text": [f"{words[i % 4]} {i}" for i in range(40)],
                  "label": [i % 4 for i in range(40)]}),
        tmp_path / "news.parquet",
    )  # fmt: skip
    pq.write_table(
        pa.table({"image": image_struct(rgb(16, seed=1)),
                  "caption": [[f"a photo {i}", "x"] for i in range(16)]}),
        tmp_path / "flickr.parquet",
    )  # fmt: skip
    path = tmp_path / "federation.toml"
    path.write_text(HUB_FEDERATION)
    return path


def test_builtin_sources_and_an_unknown_name() -> None:
    assert {"world", "real", "hub"} <= set(list_data_sources())
    with pytest.raises(UnknownNameError, match=r"Known: .*hub.*real.*world"):
        get_data_source("imagenet")
    with pytest.raises(ConfigError, match="dataset: unknown data source 'wrold'"):
        check_run(RunConfig(dataset="wrold"))


def test_hub_source_reads_each_tasks_named_set_from_local_files(hub_federation: Path) -> None:
    federation = load_federation(str(hub_federation))
    shares = {}
    for profile in federation.users:
        data = load_user_data(profile, federation, source="hub", public_size=8)
        shares[profile.id] = data
        assert data.num_classes == (10 if profile.task == "image-classification" else 4)
        assert len(data.public) == 8 and data.public[0]["text"] == "a photo 0"
    # The two image users split cifar10's 40 rows; the text user has ag_news alone.
    a, b = shares["cnn-a"], shares["cnn-b"]
    assert len(a.train) + len(a.test) + len(b.train) + len(b.test) == 40
    news = shares["bert-news"]
    assert len(news.train) + len(news.test) == 40 and "text" in news.train.column_names
    assert (hub_federation.parent / "hf").is_dir()  # the cache-dir, relative to the file


def test_hub_source_names_what_is_missing_or_wrong(hub_federation: Path) -> None:
    text = hub_federation.read_text()
    hub_federation.write_text(text.replace('text-classification = { name = "ag_news"',
                                           'text-classification = { name = "cifar10"'))  # fmt: skip
    federation = load_federation(str(hub_federation))
    with pytest.raises(FederationError, match=r"'cifar10' is a image-classification data set"):
        load_user_data(federation.user("bert-news"), federation, source="hub", public_size=8)
    hub_federation.write_text(text.replace("public = {", "unused = {"))
    federation = load_federation(str(hub_federation))
    with pytest.raises(FederationError, match=r"needs \[data.sources\] public"):
        load_user_data(federation.user("cnn-a"), federation, source="hub", public_size=8)
    hub_federation.write_text(text + '\n[data.sources.bad]\nfiles = "x"\n')
    with pytest.raises(FederationError, match="must be a data set name or a table with a name"):
        load_federation(str(hub_federation))


class _Constant(DataSource):
    """A plug-in source: every task's examples are one grey image per class."""

    def private(self, federation, task):
        labels = [i % 3 for i in range(30)]
        images = [np.full((32, 32, 3), 40 * label, dtype=np.uint8) for label in labels]
        features = Features({"image": _image(), "label": ClassLabel(num_classes=3)})
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    def public(self, federation, size):
        images = [np.full((32, 32, 3), i, dtype=np.uint8) for i in range(size)]
        return Dataset.from_dict(
            {
                "image": images,
                "text": [f"grey {i}" for i in range(size)],
                "index": list(range(size)),
            }
        )

    def num_classes(self, federation, task):
        return 3


def _image():
    from datasets import Image

    return Image()


def test_a_registered_source_serves_a_run_config() -> None:
    register_data_source("constant")(_Constant)
    try:
        assert "constant" in list_data_sources()
        check_run(RunConfig(dataset="constant"))  # known: no ConfigError
        federation = load_federation("default")
        profile = federation.user("cnn-cls")
        data = load_user_data(profile, federation, source="constant", public_size=4)
        assert data.num_classes == 3 and len(data.public) == 4
        assert 0 < len(data.train) + len(data.test) < 30  # its Dirichlet share of the 30
        assert data.public.features["text"] == Value("string")
    finally:
        SOURCES.remove("constant")


def test_users_of_one_task_in_one_process_share_one_build_of_its_set() -> None:
    """A Ray worker serving many users builds a task's private set (and the public set)
    once; another federation's data settings, or another source, build their own."""
    calls: list[str] = []

    class Counting(_Constant):
        def private(self, federation, task):  # type: ignore[no-untyped-def]
            calls.append(task)
            return super().private(federation, task)

    register_data_source("counting")(Counting)
    try:
        federation = load_federation("default")
        first, second = (federation.user(u) for u in ("cnn-cls", "convnext-cls"))
        a = load_user_data(first, federation, source="counting", public_size=4)
        b = load_user_data(second, federation, source="counting", public_size=4)
        assert calls == ["image-classification"]
        assert len(a.train) + len(a.test) + len(b.train) + len(b.test) == 30  # both shares
        other = replace(federation, data=replace(federation.data, test_fraction=0.5))
        load_user_data(first, other, source="counting", public_size=4)
        assert calls == ["image-classification"] * 2
    finally:
        SOURCES.remove("counting")


def test_the_federations_caption_synonyms_rename_kinds_in_the_worlds_captions(
    tmp_path: Path,
) -> None:
    from fedmuscle_flwr.data.world import KIND_SYNONYMS

    shipped = Path(load_federation("default").source).read_text()
    assert load_federation("default").data.caption_synonyms == 0.3
    shipped = "\n".join(x for x in shipped.splitlines() if not x.startswith("caption-synonyms"))
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(shipped.replace("[data]", "[data]\ncaption-synonyms = 1.0", 1))
    federation = load_federation(str(renamed))
    assert federation.data.caption_synonyms == 1.0
    text = get_data_source("world").public(federation, 16)["text"]
    words = {w.strip(",") for caption in text for w in caption.split()}
    assert words & {n for names in KIND_SYNONYMS.values() for n in names}
    assert not words & set(KIND_SYNONYMS)  # at 1.0 no kind keeps its own name

    for bad, needle in (("1.5", "not a probability"), ('"some"', "must be a number")):
        renamed.write_text(shipped.replace("[data]", f"[data]\ncaption-synonyms = {bad}", 1))
        with pytest.raises(FederationError, match=needle):
            load_federation(str(renamed))
