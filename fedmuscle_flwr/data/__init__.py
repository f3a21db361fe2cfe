"""Data: the procedural offline world, partitions across users, real sets, batching.

- :mod:`~fedmuscle_flwr.data.world`: the default world (public image+caption set and one
  private set per task type), generated from a seed and cached.
- :mod:`~fedmuscle_flwr.data.partition`: IID and Dirichlet shares per user, with a
  held-out test split.
- :mod:`~fedmuscle_flwr.data.hub`: real data sets by name through ``datasets``.
- :mod:`~fedmuscle_flwr.data.batches`: rows to tensor batches.
- :mod:`~fedmuscle_flwr.data.sources`: the data-source registry (``world``, ``real``,
  ``hub``, plug-ins in the entry-point group ``fedmuscle.data``).
"""

from fedmuscle_flwr.data.batches import collate, to_batch
from fedmuscle_flwr.data.partition import partition, user_split
from fedmuscle_flwr.data.sources import (
    DataSource,
    get_data_source,
    list_data_sources,
    register_data_source,
)
from fedmuscle_flwr.data.world import WorldConfig, private_dataset, public_dataset

__all__ = [
    "DataSource",
    "WorldConfig",
    "collate",
    "get_data_source",
    "list_data_sources",
    "partition",
    "private_dataset",
    "public_dataset",
    "register_data_source",
    "to_batch",
    "user_split",
]
