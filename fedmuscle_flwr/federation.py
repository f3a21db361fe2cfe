"""Users as data: the federation file (a TOML list of user profiles) and node -> user lookup.

A user profile names the model type and its builder config, the task, how the task's
private data is split among the users that share that task, and optional per-user
hyper-parameters. The federation is a TOML file: ``federation = "default"`` in the run
config picks the one shipped in ``fedmuscle_flwr/federations/``; any other value is a path.

In simulation a node's ``partition-id`` indexes the user list; in deployment a SuperNode's
``--node-config`` names its user (``user="convnext-cls"``), or gives a ``partition-id``. A
``[[users]]`` table with ``count = N`` declares a group of N alike users (ids numbered).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataSpec", "Federation", "FederationError", "UserProfile", "load_federation"]

_PACKAGED = Path(__file__).resolve().parent / "federations"
_SCHEMES = ("iid", "dirichlet")


class FederationError(ValueError):
    """A federation file, user profile or node config that cannot be used."""


@dataclass(frozen=True)
class UserProfile:
    """One user: model type and config, task, data split, optional hyper-parameters."""

    id: str
    model: str
    task: str
    model_config: Mapping[str, Any] = field(default_factory=dict)
    partition: str = "dirichlet"
    alpha: float = 0.5
    learning_rate: float | None = None
    local_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("id", "model", "task"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise FederationError(f"user {self.id!r}: {name} must be a non-empty string")
        if self.partition not in _SCHEMES:
            raise FederationError(
                f"user {self.id!r}: partition must be one of {list(_SCHEMES)}, "
                f"got {self.partition!r}"
            )
        if self.alpha <= 0:
            raise FederationError(f"user {self.id!r}: alpha must be > 0, got {self.alpha!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> UserProfile:
        """Build from a TOML table (kebab-case keys)."""
        known = {"id", "model", "task", "model-config", "partition", "alpha", "learning-rate",
                 "local-steps"}  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise FederationError(
                f"user {data.get('id')!r}: unknown keys {unknown}; known: {sorted(known)}"
            )
        try:
            return cls(
                id=data["id"],
                model=data["model"],
                task=data["task"],
                model_config=dict(data.get("model-config", {})),
                partition=data.get("partition", "dirichlet"),
                alpha=float(data.get("alpha", 0.5)),
                learning_rate=data.get("learning-rate"),
                local_steps=data.get("local-steps"),
            )
        except KeyError as err:
            raise FederationError(f"a user has no {err.args[0]!r} (needs id, model, task)") from err


@dataclass(frozen=True)
class DataSpec:
    """Data settings shared by the federation's users."""

    image_size: int = 32
    private_size: int = 1200
    test_fraction: float = 0.2
    world_seed: int = 0
    # the world's share of captions naming a kind by a synonym (WorldConfig.caption_synonyms)
    caption_synonyms: float = 0.0
    # [data.sources]: role (a task id, or "public") -> options of the data source (the
    # "hub" source reads name, data-files, data-dir); hashable pairs, sorted
    sources: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DataSpec:
        """Build from the ``[data]`` table (kebab-case keys)."""
        synonyms = data.get("caption-synonyms", 0.0)
        if isinstance(synonyms, bool) or not isinstance(synonyms, int | float):
            raise FederationError(f"[data] caption-synonyms must be a number, got {synonyms!r}")
        if not 0.0 <= synonyms <= 1.0:
            raise FederationError(
                f"[data] caption-synonyms = {synonyms} is not a probability; give a value in "
                "[0, 1] (the share of captions that name a shape's kind by a synonym)"
            )
        return cls(
            image_size=int(data.get("image-size", 32)),
            private_size=int(data.get("private-size", 1200)),
            test_fraction=float(data.get("test-fraction", 0.2)),
            world_seed=int(data.get("world-seed", 0)),
            caption_synonyms=float(synonyms),
            sources=_source_options(data.get("sources", {})),
        )

    def source_options(self, role: str) -> dict[str, Any]:
        """The ``[data.sources]`` options of ``role`` (empty when not given)."""
        for name, options in self.sources:
            if name == role:
                return {k: list(v) if isinstance(v, tuple) else v for k, v in options}
        return {}


def _source_options(table: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """``[data.sources]`` as hashable pairs; a plain string stands for ``{name = ...}``."""
    if not isinstance(table, Mapping):
        raise FederationError(f"[data.sources] must be a table, got {table!r}")
    pairs = []
    for role, value in table.items():
        options = {"name": value} if isinstance(value, str) else value
        if not isinstance(options, Mapping) or not isinstance(options.get("name"), str):
            raise FederationError(
                f"[data.sources] {role} must be a data set name or a table with a name, "
                f"got {value!r}"
            )
        frozen = tuple(
            (str(k), tuple(v) if isinstance(v, list) else v) for k, v in sorted(options.items())
        )
        pairs.append((str(role), frozen))
    return tuple(sorted(pairs))


@dataclass(frozen=True)
class Federation:
    """The users of a federation and their shared data settings."""

    users: tuple[UserProfile, ...]
    data: DataSpec = DataSpec()
    source: str = ""

    def __post_init__(self) -> None:
        if not self.users:
            raise FederationError(f"federation {self.source!r} lists no users")
        ids = [u.id for u in self.users]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise FederationError(f"federation {self.source!r}: duplicate user ids {duplicates}")

    def user(self, user_id: str) -> UserProfile:
        """The profile with this id."""
        for profile in self.users:
            if profile.id == user_id:
                return profile
        raise FederationError(
            f"no user {user_id!r} in federation {self.source!r}; "
            f"users: {[u.id for u in self.users]}"
        )

    def peers(self, profile: UserProfile) -> list[UserProfile]:
        """Users sharing ``profile``'s task, in file order (they split that task's data)."""
        return [u for u in self.users if u.task == profile.task]

    def user_for_node(self, node_config: Mapping[str, Any]) -> UserProfile:
        """Which user a node serves: ``user`` (an id) or ``partition-id`` in its node config."""
        if "user" in node_config:
            return self.user(str(node_config["user"]))
        if "partition-id" not in node_config:
            raise FederationError(
                "the node config names no user: start the SuperNode with "
                "--node-config 'user=\"<user id>\"' (or partition-id=<n>)"
            )
        index = int(node_config["partition-id"])
        if not 0 <= index < len(self.users):
            raise FederationError(
                f"partition-id {index} is out of range: federation {self.source!r} has "
                f"{len(self.users)} users; run the simulation with num-supernodes={len(self.users)}"
            )
        return self.users[index]

    def check_every_user_has_a_node(self, node_config: Mapping[str, Any]) -> None:
        """Refuse a simulation with fewer SuperNodes (``num-partitions``) than users.

        It would silently leave users out; the message names them and the fix.
        """
        nodes = int(node_config.get("num-partitions", len(self.users)))
        if nodes < len(self.users):
            missing = [u.id for u in self.users[nodes:]]
            raise FederationError(
                f"the simulation has {nodes} SuperNodes for the {len(self.users)} users of "
                f"federation {self.source!r}; users without a node: {missing}. Run with "
                f"--federation-config num-supernodes={len(self.users)}, or set the run-config "
                "key allow-missing-users=true to run without them"
            )


def load_federation(name_or_path: str) -> Federation:
    """Load ``default`` (or another name shipped in the package) or a TOML file by path."""
    path = _PACKAGED / f"{name_or_path}.toml"
    if not path.is_file():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        shipped = sorted(p.stem for p in _PACKAGED.glob("*.toml"))
        raise FederationError(
            f"federation {name_or_path!r} is neither a shipped federation {shipped} nor a file"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise FederationError(f"{path}: not valid TOML: {err}") from err
    users = tuple(profile for u in raw.get("users", []) for profile in _expand(u))
    return Federation(
        users=users, data=DataSpec.from_mapping(raw.get("data", {})), source=str(path)
    )


def _expand(table: Mapping[str, Any]) -> list[UserProfile]:
    """One ``[[users]]`` table as profiles: a group with ``count = N`` gives N users.

    Their ids are the table's ``id`` with ``-1`` .. ``-N`` appended (zero-padded to the
    same width, so they sort in order); everything else is shared.
    """
    if "count" not in table:
        return [UserProfile.from_mapping(table)]
    count = table["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FederationError(
            f"user group {table.get('id')!r}: count must be a whole number >= 1, got {count!r}"
        )
    base = {k: v for k, v in table.items() if k != "count"}
    width = len(str(count))
    return [
        UserProfile.from_mapping(base | {"id": f"{base.get('id')}-{k:0{width}d}"})
        for k in range(1, count + 1)
    ]
