"""Non-IID splits of a private data set across users, with flwr-datasets partitioners.

One user's share is :func:`partition` (``scheme="iid"`` or ``"dirichlet"`` by a label
column), and its own held-out test data comes from :func:`user_split`, a seeded train/test
split of that share. Partitioners are built on in-memory ``datasets.Dataset`` objects and
memoised per (data set fingerprint, arguments), so the users of one process that ask for
their shares in turn pay for the assignment once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from datasets import Dataset, DatasetDict
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

__all__ = ["SCHEMES", "partition", "partition_sizes", "user_split"]

SCHEMES: tuple[str, ...] = ("iid", "dirichlet")
_MEMO: OrderedDict[tuple[Any, ...], Partitioner] = OrderedDict()
_MEMO_SIZE = 8


def _validate(
    dataset: Dataset,
    num_partitions: int,
    scheme: str,
    alpha: float,
    by: str,
    min_partition_size: int,
) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; known schemes: {SCHEMES}")
    if not isinstance(num_partitions, int) or num_partitions < 1:
        raise ValueError(f"num_partitions must be a positive int, got {num_partitions!r}")
    if num_partitions > len(dataset):
        raise ValueError(
            f"num_partitions={num_partitions} exceeds the {len(dataset)} rows of the data set"
        )
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if by not in dataset.column_names:
            raise ValueError(
                f"partition column by={by!r} is not in the data set; "
                f"columns: {dataset.column_names}"
            )
        if min_partition_size < 0 or min_partition_size * num_partitions > len(dataset):
            raise ValueError(
                f"min_partition_size={min_partition_size} cannot hold for "
                f"{num_partitions} partitions of {len(dataset)} rows"
            )


def _partitioner(
    dataset: Dataset,
    num_partitions: int,
    scheme: str,
    alpha: float,
    by: str,
    seed: int,
    min_partition_size: int,
) -> Partitioner:
    key = (
        dataset._fingerprint,
        repr(dataset.format),
        num_partitions,
        scheme,
        alpha,
        by,
        seed,
        min_partition_size,
    )
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    partitioner: Partitioner
    if scheme == "iid":
        # IidPartitioner cuts contiguous shards: shuffle first so sorted data stays IID.
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = dataset.shuffle(seed=seed)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=by,
            alpha=alpha,
            min_partition_size=min_partition_size,
            seed=seed,
        )
        partitioner.dataset = dataset
    _MEMO[key] = partitioner
    if len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return partitioner


def partition(
    dataset: Dataset,
    *,
    num_partitions: int,
    partition_id: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    by: str = "label",
    seed: int = 0,
    min_partition_size: int | None = None,
) -> Dataset:
    """Return user ``partition_id``'s share of ``dataset``.

    Parameters
    ----------
    dataset : datasets.Dataset
        The private data of one task, in memory.
    num_partitions : int
        Number of users sharing the data set.
    partition_id : int
        Which share, in ``[0, num_partitions)``.
    scheme : {"iid", "dirichlet"}
        ``"iid"``: a seeded shuffle cut into near-equal shards. ``"dirichlet"``: per
        class, proportions drawn from ``Dirichlet(alpha)`` over users (label skew).
    alpha : float
        Dirichlet concentration; smaller is more skewed. Ignored for IID.
    by : str
        Column holding the single class label that Dirichlet skews.
    seed : int
        Seed of the shuffle or of the Dirichlet draws.
    min_partition_size : int, optional
        Dirichlet redraws until every share has at least this many rows. Default:
        ``min(10, len(dataset) // (2 * num_partitions))``.

    Returns
    -------
    datasets.Dataset
        The share, with the format of ``dataset``.

    Raises
    ------
    ValueError
        For an unknown scheme, an out-of-range ``partition_id``, a missing ``by``
        column, a non-positive ``alpha`` or an unreachable ``min_partition_size``.
    """
    if min_partition_size is None:
        min_partition_size = min(10, len(dataset) // (2 * max(num_partitions, 1)))
    _validate(dataset, num_partitions, scheme, alpha, by, min_partition_size)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition_id={partition_id} is out of range for {num_partitions} partitions"
        )
    p = _partitioner(dataset, num_partitions, scheme, alpha, by, seed, min_partition_size)
    try:
        return p.load_partition(partition_id)
    except ValueError as err:
        _MEMO.pop(next(k for k, v in _MEMO.items() if v is p), None)
        raise ValueError(
            f"could not split {len(dataset)} rows into {num_partitions} {scheme} partitions "
            f"by {by!r} with alpha={alpha} and min_partition_size={min_partition_size}: "
            f"{err} Raise alpha or lower min_partition_size."
        ) from err


def partition_sizes(dataset: Dataset, *, num_partitions: int, **kwargs: Any) -> list[int]:
    """Rows of every share, for the same arguments as :func:`partition`."""
    return [
        len(partition(dataset, num_partitions=num_partitions, partition_id=i, **kwargs))
        for i in range(num_partitions)
    ]


def user_split(
    dataset: Dataset,
    *,
    partition_id: int,
    seed: int = 0,
    test_fraction: float = 0.2,
    **partitioning: Any,
) -> DatasetDict:
    """User ``partition_id``'s share split into ``"train"`` and held-out ``"test"``.

    The split is seeded by ``seed`` and ``partition_id``, so it is the same every time a
    user asks, and different users draw different splits. ``partitioning`` (with
    ``num_partitions``) and the other parameters are those of :func:`partition`;
    ``test_fraction`` must be in ``(0, 1)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    share = partition(dataset, partition_id=partition_id, seed=seed, **partitioning)
    if len(share) < 2:
        raise ValueError(
            f"partition {partition_id} has {len(share)} rows; a train/test split needs >= 2"
        )
    split = share.train_test_split(
        test_size=test_fraction, seed=seed * 100_003 + partition_id, shuffle=True
    )
    return DatasetDict({"train": split["train"], "test": split["test"]})
