"""Client state on disk: a new process (no cache) continues exactly where the last stopped."""

from __future__ import annotations

import pytest
import torch

import client_app.state as state_module
from client_app.app import build_trainer
from client_app.state import StateStore
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
    store = StateStore(tmp_path, run_id=3, node_id=11)
    trainer = store.open(lambda: build_trainer(config, profile, config.federation))
    trainer.supervised_update()
    trainer.rounds_done += 1
    store.save(trainer)

    state_module._CACHE.clear()  # what a new process sees: only the disk
    restored = store.open(lambda: build_trainer(config, profile, config.federation))
    assert restored is not trainer and restored.rounds_done == 1
    indices = list(range(8))
    assert torch.equal(restored.represent(indices), trainer.represent(indices))
    # Same optimiser moments and batch order: the next update gives the same model.
    trainer.supervised_update()
    restored.supervised_update()
    assert torch.equal(restored.represent(indices), trainer.represent(indices))


def test_cached_trainer_is_reused_only_while_the_disk_agrees(tmp_path, config):
    profile = load_federation(TINY_FEDERATION).users[0]
    store = StateStore(tmp_path, run_id=3, node_id=12)
    trainer = store.open(lambda: build_trainer(config, profile, config.federation))
    store.save(trainer)
    assert store.open(lambda: pytest.fail("should reuse the cached trainer")) is trainer
    other = StateStore(tmp_path, run_id=3, node_id=12)  # another process saves a newer state
    other.save(trainer)
    state_module._CACHE[store.directory] = ("stale-token", trainer)
    assert store.open(lambda: build_trainer(config, profile, config.federation)) is not trainer


def test_corrupt_state_names_the_directory_to_delete(tmp_path, config):
    profile = load_federation(TINY_FEDERATION).users[0]
    store = StateStore(tmp_path, run_id=3, node_id=13)
    store.save(store.open(lambda: build_trainer(config, profile, config.federation)))
    state_module._CACHE.clear()
    store.state_path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=f"delete {store.directory}"):
        store.open(lambda: build_trainer(config, profile, config.federation))
