"""Client state on disk: keyed by experiment and user, one file per round, restored exactly."""

from __future__ import annotations

import pytest
import torch

import client_app.state as state_module
from client_app.app import build_trainer
from client_app.state import KEEP_ROUNDS, StateStore
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.federation import load_federation
from tests.tiny import TINY_FEDERATION


@pytest.fixture
def config() -> RunConfig:
    return RunConfig(
        federation=TINY_FEDERATION, public_size=64, public_batch_size=8, embed_dim=16,
        local_steps=2, batch_size=8,
    )  # fmt: skip


def test_restored_trainer_continues_bit_identically(tmp_path, config):
    profile = load_federation(TINY_FEDERATION).users[1]  # ViT with LoRA
    store = StateStore(tmp_path, "exp-a", profile.id)
    trainer = store.open(1, lambda: build_trainer(config, profile, config.federation))
    with trainer.random_state():
        trainer.supervised_update()
    trainer.rounds_done += 1
    store.save(trainer, 1)
    # Model state is private: owner-only directory and file.
    assert store.directory.stat().st_mode & 0o777 == 0o700
    assert store.path(1).stat().st_mode & 0o777 == 0o600

    state_module._CACHE.clear()  # what a new process sees: only the disk
    restored = store.open(2, lambda: build_trainer(config, profile, config.federation))
    assert restored is not trainer and restored.rounds_done == 1
    indices = list(range(8))
    assert torch.equal(restored.represent(indices), trainer.represent(indices))
    # Same optimiser moments, batch order and random state: the next update agrees.
    for t in (trainer, restored):
        with t.random_state():
            t.supervised_update()
    assert torch.equal(restored.represent(indices), trainer.represent(indices))


def test_a_round_starts_from_the_newest_state_before_it(tmp_path, config):
    """After a crash in round 3 (some users saved it), a resumed round 3 starts from 2."""
    profile = load_federation(TINY_FEDERATION).users[0]
    store = StateStore(tmp_path, "exp-a", profile.id)
    trainer = store.open(1, lambda: build_trainer(config, profile, config.federation))
    for round_id in range(1, 7):
        trainer.rounds_done = round_id
        store.save(trainer, round_id)
    assert store.saved_rounds() == list(range(7 - KEEP_ROUNDS, 7))  # old ones pruned
    state_module._CACHE.clear()
    build = lambda: build_trainer(config, profile, config.federation)  # noqa: E731
    assert store.open(6, build).rounds_done == 5
    assert store.open(7, build).rounds_done == 6
    assert store.open(9, build).rounds_done == 6  # a user that missed rounds 7 and 8


def test_state_is_keyed_by_experiment_and_user_not_by_flower_ids(tmp_path, config):
    profile = load_federation(TINY_FEDERATION).users[0]
    build = lambda: build_trainer(config, profile, config.federation)  # noqa: E731
    trained = StateStore(tmp_path, "exp-a", profile.id)
    trainer = trained.open(1, build)
    trainer.rounds_done = 1
    trained.save(trainer, 1)
    state_module._CACHE.clear()
    assert StateStore(tmp_path, "exp-a", profile.id).open(2, build).rounds_done == 1
    assert StateStore(tmp_path, "exp-b", profile.id).open(2, build).rounds_done == 0  # fresh
    with pytest.raises(ValueError, match="cannot name a state directory"):
        StateStore(tmp_path, "../escape", profile.id)


def test_cached_trainer_is_reused_only_while_the_disk_agrees(tmp_path, config):
    profile = load_federation(TINY_FEDERATION).users[0]
    store = StateStore(tmp_path, "exp-a", profile.id)
    trainer = store.open(1, lambda: build_trainer(config, profile, config.federation))
    store.save(trainer, 1)
    assert store.open(2, lambda: pytest.fail("should reuse the cached trainer")) is trainer
    StateStore(tmp_path, "exp-a", profile.id).save(trainer, 1)  # another process saves again
    path, _, cached = state_module._CACHE[store.directory]
    state_module._CACHE[store.directory] = (path, -1, cached)  # a stale view of that file
    assert store.open(2, lambda: build_trainer(config, profile, config.federation)) is not trainer


def test_corrupt_state_names_the_directory_to_delete(tmp_path, config):
    profile = load_federation(TINY_FEDERATION).users[0]
    store = StateStore(tmp_path, "exp-a", profile.id)
    store.save(store.open(1, lambda: build_trainer(config, profile, config.federation)), 1)
    state_module._CACHE.clear()
    store.path(1).write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=f"delete {store.directory}"):
        store.open(2, lambda: build_trainer(config, profile, config.federation))
