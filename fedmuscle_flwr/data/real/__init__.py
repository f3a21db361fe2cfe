"""Offline real-data federation from Debian packages (emoji, Fashion-MNIST, WordNet).

- :mod:`~.debian`: packaged paths, the ``apt-get`` command, the missing-package error.
- :mod:`~.emoji`: emoji rendering, captions, group labels, masks, word labels, splits.
- :mod:`~.fashion_mnist`: Fashion-MNIST IDX files.
- :mod:`~.wordnet`: WordNet glosses by lexname.
- :mod:`~.federation`: the data sets by name and task, from one :class:`RealDataConfig`;
  built from :mod:`~.config` (the config), :mod:`~.builders` (one split of each set from
  the raw sources) and :mod:`~.catalog` (the named sets and the one each task uses).
- :mod:`~.columns`: fast in-memory ``datasets.Dataset`` construction.

Select the whole set with ``real_datasets(RealDataConfig(...))``; install the sources with
``apt-get install -y --no-install-recommends`` and the packages in :data:`APT_PACKAGES`.
"""

from fedmuscle_flwr.data.real.debian import APT_PACKAGES, MissingDebianPackageError, apt_command
from fedmuscle_flwr.data.real.emoji import EMOJI_LABELS
from fedmuscle_flwr.data.real.federation import (
    REAL_DATASETS,
    REAL_TASK_DATASETS,
    TASKS,
    RealDataConfig,
    RealDatasetSpec,
    load_real_dataset,
    load_real_private,
    load_real_public,
    real_class_names,
    real_datasets,
    real_num_classes,
)

__all__ = [
    "APT_PACKAGES",
    "EMOJI_LABELS",
    "REAL_DATASETS",
    "REAL_TASK_DATASETS",
    "TASKS",
    "MissingDebianPackageError",
    "RealDataConfig",
    "RealDatasetSpec",
    "apt_command",
    "load_real_dataset",
    "load_real_private",
    "load_real_public",
    "real_class_names",
    "real_datasets",
    "real_num_classes",
]
