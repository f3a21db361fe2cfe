"""The one device resolver, shared by the server math and the client trainer."""

from __future__ import annotations

import pytest
import torch

from fedmuscle_flwr import aggregation, devices, training


def test_server_and_client_use_the_same_resolver() -> None:
    assert aggregation.best_device is devices.best_device
    assert training.resolve_device is devices.resolve_device


def test_auto_is_the_best_device_and_names_pass_through() -> None:
    assert devices.resolve_device("auto") == devices.best_device()
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_best_device_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.best_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.best_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.best_device() == torch.device("cuda")


def test_cuda_without_cuda_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        devices.resolve_device("cuda:0")
