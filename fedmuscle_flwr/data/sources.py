"""Data sources: where a federation's private sets and its public set come from.

A source is a registered :class:`DataSource`, chosen by the run-config key ``dataset``. It
gives each task's whole private set (split among the task's users by
:func:`fedmuscle_flwr.data.users.load_user_data`), the public set, and a task's number of
classes. Built-ins:

- ``world``: the procedural world (generated from the federation's ``world-seed``);
- ``real``: the offline real-data federation (Debian packages);
- ``hub``: named real data sets (:mod:`fedmuscle_flwr.data.hub`) per task, from the
  federation file's ``[data.sources]`` table, read from local files or the Hugging Face
  Hub.

Other packages add sources through the entry-point group ``fedmuscle.data`` (the value a
:class:`DataSource` subclass or instance), or with :func:`register_data_source`.

    [data.sources]
    image-classification = "cifar10"                   # from the Hub (needs network)
    text-classification = { name = "ag_news", data-files = "ag_news/*.parquet" }
    public = { name = "flickr30k", data-dir = "/data/flickr30k" }
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from datasets import ClassLabel, Dataset, Sequence

from fedmuscle_flwr._registry import Registry, named_instance_of
from fedmuscle_flwr.federation import Federation, FederationError

__all__ = [
    "ENTRY_POINT_GROUP",
    "DataSource",
    "HubSource",
    "RealSource",
    "WorldSource",
    "get_data_source",
    "list_data_sources",
    "register_data_source",
]

ENTRY_POINT_GROUP = "fedmuscle.data"


class DataSource(ABC):
    """A federation's data: each task's private set, the public set, classes per task.

    Rows use the batch columns of :mod:`fedmuscle_flwr.data.batches` (``image``, ``text``,
    ``label``, ``labels``, ``mask``; the public set ``image``, ``text``, ``index``); every
    private set has ``label`` (the partition key: the class, or a dominant one).
    """

    name: str = ""

    @abstractmethod
    def private(self, federation: Federation, task: str) -> Dataset:
        """The whole private set of ``task`` (before the split among its users)."""

    @abstractmethod
    def public(self, federation: Federation, size: int) -> Dataset:
        """The first ``size`` samples of the public set (fewer raises ``ValueError``)."""

    @abstractmethod
    def num_classes(self, federation: Federation, task: str) -> int:
        """Classes of ``task`` (labels for multi-label, mask ids for segmentation)."""

    def class_names(self, federation: Federation, task: str) -> tuple[str, ...]:
        """Names of ``task``'s :meth:`num_classes` classes, in order; () when unnamed.

        Optional: a multi-label user learns presence from single-label peers of the same
        names (``distill-presence``) only where its source names its classes.
        """
        return ()


SOURCES: Registry[DataSource] = Registry(
    "data source", ENTRY_POINT_GROUP, named_instance_of(DataSource, "data source")
)
SourceT = TypeVar("SourceT", bound="type[DataSource] | DataSource")


def register_data_source(name: str, *, exist_ok: bool = False) -> Callable[[SourceT], SourceT]:
    """Register a :class:`DataSource` subclass (built with no arguments) or instance."""
    return SOURCES.decorator(name, exist_ok=exist_ok)


def get_data_source(name: str) -> DataSource:
    """The source registered as ``name`` (an unknown name lists the known ones)."""
    return SOURCES.get(name)


def list_data_sources() -> list[str]:
    """Names of the registered sources, built-in and plug-in."""
    return SOURCES.names()


def _first(dataset: Dataset, size: int, what: str) -> Dataset:
    if len(dataset) < size:
        raise ValueError(f"public-size={size} but the {what} public set has {len(dataset)}")
    return dataset.select(range(size))


@register_data_source("world")
class WorldSource(DataSource):
    """The procedural world (:mod:`fedmuscle_flwr.data.world`)."""

    def _config(self, federation: Federation, public_size: int = 0) -> Any:
        from fedmuscle_flwr.data.world import WorldConfig

        return WorldConfig(
            seed=federation.data.world_seed,
            image_size=federation.data.image_size,
            caption_synonyms=federation.data.caption_synonyms,
            private_size=federation.data.private_size,
            public_size=public_size,
        )

    def private(self, federation: Federation, task: str) -> Dataset:
        """The world's private set of ``task``."""
        from fedmuscle_flwr.data.world import private_dataset

        return private_dataset(self._config(federation), task)

    def public(self, federation: Federation, size: int) -> Dataset:
        """The world's public image+caption set of ``size`` scenes."""
        from fedmuscle_flwr.data.world import public_dataset

        return public_dataset(self._config(federation, size))

    def num_classes(self, federation: Federation, task: str) -> int:
        """Classes of ``task`` in the world."""
        from fedmuscle_flwr.data.world import num_classes

        return int(num_classes(self._config(federation), task))

    def class_names(self, federation: Federation, task: str) -> tuple[str, ...]:
        """Names of ``task``'s classes in the world (shape kinds for the image tasks)."""
        from fedmuscle_flwr.data.world import class_names

        return tuple(class_names(self._config(federation), task))


@register_data_source("real")
class RealSource(DataSource):
    """The offline real-data federation (:mod:`fedmuscle_flwr.data.real`)."""

    def _config(self, federation: Federation) -> Any:
        from fedmuscle_flwr.data.real import RealDataConfig

        return RealDataConfig(
            seed=federation.data.world_seed,
            image_size=federation.data.image_size,
            fashion_train_size=federation.data.private_size,
            wordnet_max_per_class=max(1, federation.data.private_size // 16),
        )

    def private(self, federation: Federation, task: str) -> Dataset:
        """The real-data federation's private set of ``task``."""
        from fedmuscle_flwr.data.real import load_real_private

        return load_real_private(task, self._config(federation), split="train")

    def public(self, federation: Federation, size: int) -> Dataset:
        """The first ``size`` emoji images with their names."""
        from fedmuscle_flwr.data.real import load_real_public

        return _first(load_real_public(self._config(federation)), size, "real")

    def num_classes(self, federation: Federation, task: str) -> int:
        """Classes of ``task`` in the real-data federation."""
        from fedmuscle_flwr.data.real import real_num_classes

        return int(real_num_classes(task, self._config(federation)))

    def class_names(self, federation: Federation, task: str) -> tuple[str, ...]:
        """Names of ``task``'s classes in the real-data federation."""
        from fedmuscle_flwr.data.real import real_class_names

        return tuple(real_class_names(task, self._config(federation)))


@register_data_source("hub")
class HubSource(DataSource):
    """Named real data sets per task, from the federation file's ``[data.sources]``.

    Each entry is a name of :func:`fedmuscle_flwr.data.hub.list_hub_datasets` (read from
    the Hugging Face Hub) or a table ``{ name = ..., data-files = ..., data-dir = ...,
    cache-dir = ..., revision = ... }`` (local files; relative paths are relative to the
    federation file). The ``public`` entry
    names an image+caption set; each task's entry gives its private set (the ``train``
    split; the users' test shares are held out of it as for every source).
    """

    def _load(self, federation: Federation, role: str, split: str = "train") -> Dataset:
        from fedmuscle_flwr.data.hub import load_hub_dataset

        options = federation.data.source_options(role)
        if not options:
            raise FederationError(
                f"dataset = 'hub' needs [data.sources] {role} = \"<data set name>\" (or a "
                f"table with name and data-files / data-dir) in federation {federation.source!r}"
            )
        base = Path(federation.source).parent if federation.source else Path.cwd()
        paths = {
            key: None if options.get(key) is None else _resolve(base, options[key])
            for key in ("data-files", "data-dir", "cache-dir")
        }
        return load_hub_dataset(
            str(options["name"]),
            split=split,
            data_files=paths["data-files"],
            data_dir=paths["data-dir"],
            cache_dir=paths["cache-dir"],
            revision=options.get("revision"),
        )

    def private(self, federation: Federation, task: str) -> Dataset:
        """The ``train`` split of the data set named for ``task``."""
        from fedmuscle_flwr.data.hub import HUB_DATASETS

        name = federation.data.source_options(task).get("name")
        spec = HUB_DATASETS.get(str(name))
        if spec is not None and spec.task != task:
            raise FederationError(
                f"[data.sources] {task} = {name!r}, but {name!r} is a {spec.task} data set"
            )
        return self._load(federation, task)

    def public(self, federation: Federation, size: int) -> Dataset:
        """The first ``size`` samples of the data set named for ``public``."""
        return _first(self._load(federation, "public"), size, "hub")

    def num_classes(self, federation: Federation, task: str) -> int:
        """The named data set's classes (from its spec, else its features)."""
        from fedmuscle_flwr.data.hub import HUB_DATASETS

        spec = HUB_DATASETS.get(str(federation.data.source_options(task).get("name")))
        if spec is not None and spec.num_classes:
            return spec.num_classes
        feature = self.private(federation, task).features
        label = feature.get("labels") or feature.get("label")
        if isinstance(label, Sequence):
            label = label.feature
        if isinstance(label, ClassLabel):
            return int(label.num_classes)
        raise ValueError(f"cannot tell the number of classes of {task!r} from its data")

    def class_names(self, federation: Federation, task: str) -> tuple[str, ...]:
        """The named data set's class names, from its spec (() for other data sets)."""
        from fedmuscle_flwr.data.hub import HUB_DATASETS

        spec = HUB_DATASETS.get(str(federation.data.source_options(task).get("name")))
        return tuple(spec.class_names) if spec is not None else ()


def _resolve(base: Path, value: Any) -> Any:
    """Relative paths (or a list of them) against the federation file's directory."""
    if isinstance(value, list | tuple):
        return [_resolve(base, v) for v in value]
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)
