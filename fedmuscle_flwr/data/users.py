"""A user's data, from its profile: its share of its task's private set, and the public set.

Each task's private set is split among the users of that task (IID or Dirichlet by label,
with flwr-datasets partitioners), and each share into train and held-out test. The source
is one run-config value, ``dataset``: a registered data source
(:mod:`fedmuscle_flwr.data.sources`: ``world``, ``real``, ``hub``, or a plug-in).

A process that serves many users (a Ray worker of a simulation) builds each task's private
set and the public set once: :func:`shared_sets` keeps the last few in memory, so a user's
data costs its partition and split only (and the partitioner's memo then hits as well).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from datasets import ClassLabel, Dataset

from fedmuscle_flwr.data.partition import user_split
from fedmuscle_flwr.data.sources import get_data_source
from fedmuscle_flwr.federation import Federation, UserProfile

__all__ = ["UserData", "load_user_data", "shared_sets"]

_SHARED: OrderedDict[tuple, Dataset] = OrderedDict()
_SHARED_SIZE = 8  # task private sets and public sets kept per process


@dataclass(frozen=True)
class UserData:
    """What one user trains and evaluates on, and the public set it represents."""

    train: Dataset
    test: Dataset
    public: Dataset
    num_classes: int
    image_size: int | None = None
    validation: Dataset | None = None
    label_names: tuple[str, ...] = ()  # names of the ``label`` classes, when a ClassLabel
    class_names: tuple[str, ...] = ()  # names of the task's num_classes outputs, when known

    @property
    def label_space(self) -> tuple[str, ...]:
        """The classes a single-label task predicts, by name (empty when unnamed)."""
        return self.label_names if len(self.label_names) == self.num_classes else ()

    @property
    def output_space(self) -> tuple[str, ...]:
        """The names of the task's outputs (e.g. a multi-label task's), empty when unnamed."""
        return self.class_names if len(self.class_names) == self.num_classes else ()


def load_user_data(
    profile: UserProfile,
    federation: Federation,
    *,
    source: str,
    public_size: int,
    seed: int = 0,
    validation_fraction: float = 0.0,
    label_budget: int = 0,
) -> UserData:
    """Build ``profile``'s train/validation/test split and the public set.

    ``validation_fraction`` of the user's train share is held out for validation (the test
    split is never touched); ``label_budget`` > 0 then keeps only that many labelled
    training examples (a seeded subset), the label-scarce regime. Both are the same for
    every algorithm, so a local baseline trains on exactly the examples a collaborative
    run trains on.
    """
    data_source = get_data_source(source)
    peers = federation.peers(profile)
    split = user_split(
        shared_sets(source, federation, profile.task),
        num_partitions=len(peers),
        partition_id=peers.index(profile),
        scheme=profile.partition,
        alpha=profile.alpha,
        seed=seed,
        test_fraction=federation.data.test_fraction,
    )
    try:
        public_set = shared_sets(source, federation, "public", public_size)
    except IndexError as err:
        raise ValueError(
            f"public-size={public_size} is larger than the {source!r} public set"
        ) from err
    if len(public_set) < public_size:
        raise ValueError(
            f"public-size={public_size} but the {source!r} public set has {len(public_set)} samples"
        )
    train, validation = split["train"], None
    if validation_fraction > 0:
        if len(train) < 4:
            raise ValueError(
                f"user {profile.id!r} has {len(train)} training examples, too few to hold out "
                f"validation-fraction={validation_fraction}; set it to 0"
            )
        held = train.train_test_split(
            test_size=validation_fraction, seed=seed * 100_019 + peers.index(profile)
        )
        train, validation = held["train"], held["test"]
    if 0 < label_budget < len(train):
        train = train.shuffle(seed=seed * 100_043 + peers.index(profile)).select(
            range(label_budget)
        )
    label = train.features.get("label")
    return UserData(
        label_names=tuple(label.names) if isinstance(label, ClassLabel) else (),
        train=train,
        validation=validation,
        test=split["test"],
        public=public_set,
        num_classes=data_source.num_classes(federation, profile.task),
        class_names=tuple(data_source.class_names(federation, profile.task)),
        image_size=federation.data.image_size,
    )


def shared_sets(source: str, federation: Federation, role: str, public_size: int = 0) -> Dataset:
    """The private set of task ``role``, or the public set (``role="public"``), memoised.

    Keyed by the source's class, the federation file and its ``[data]`` settings, so every user of
    a task in this process shares one in-memory set (sources are deterministic; a set is
    never changed in place, users take their shares by selection).
    """
    data_source = get_data_source(source)
    key = (type(data_source), federation.source, federation.data, role, public_size)
    if key in _SHARED:
        _SHARED.move_to_end(key)
        return _SHARED[key]
    if role == "public":
        dataset = data_source.public(federation, public_size)
    else:
        dataset = data_source.private(federation, role)
    _SHARED[key] = dataset
    if len(_SHARED) > _SHARED_SIZE:
        _SHARED.popitem(last=False)
    return dataset
