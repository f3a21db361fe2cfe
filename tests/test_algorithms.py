"""Algorithms as registered objects: built-ins, errors, and a new one that touches no app file."""

from __future__ import annotations

import json

import pytest
import torch

from fedmuscle_flwr.algorithms import (
    ALGORITHMS,
    Algorithm,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.results import RunResults
from server_app.inprocess import run_inprocess
from tests.tiny import tiny_run_config


def test_builtins_declare_what_they_need():
    assert {"local", "pairwise", "ensemble", "muscle"} <= set(list_algorithms())
    assert not get_algorithm("local").collaborative
    muscle, pairwise = get_algorithm("muscle"), get_algorithm("pairwise")
    assert muscle.needs_log_alpha and muscle.supports_dense
    assert not pairwise.needs_log_alpha and not pairwise.supports_dense
    with pytest.raises(ValueError, match="no contrastive loss"):
        get_algorithm("local").objective(None, tau=0.1, tau_alpha=0.1)  # type: ignore[arg-type]


def test_unknown_algorithm_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"algorithm must be one of \[.*'muscle'"):
        RunConfig(algorithm="fedavg")
    with pytest.raises(KeyError, match="Did you mean 'muscle'"):
        get_algorithm("mussle")


def test_registration_refuses_non_algorithms_and_duplicates():
    with pytest.raises(TypeError, match="Algorithm subclass or instance"):
        ALGORITHMS.add("nope", object())
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("muscle")(Algorithm)


@pytest.fixture
def cosine_algorithm():
    """A new algorithm, registered from outside the project's apps."""

    @register_algorithm("cosine-test")
    class Cosine(Algorithm):
        def objective(self, payload, *, tau, tau_alpha):
            others = payload.others

            def loss(z: torch.Tensor) -> torch.Tensor:
                return 1 - (z[None] * others.to(z.device)).sum(-1).mean()

            return loss

    yield Cosine
    ALGORITHMS.remove("cosine-test")


@pytest.mark.usefixtures("cosine_algorithm", "flower_task_identity")
def test_a_registered_algorithm_runs_through_both_apps(tmp_path):
    path = run_inprocess(tiny_run_config(tmp_path, algorithm="cosine-test"))
    results = RunResults.from_dict(json.loads(path.read_text()))
    second = results.rounds[1]
    assert sorted(second.replied) == sorted(results.users), second.failed
    assert all("contrastive-loss" in m for m in second.metrics.values())
    assert all(0.0 <= m["contrastive-loss"] <= 2.0 for m in second.metrics.values())
    assert all(len(p) == 2 for p in second.partners.values())


def test_shuffled_muscle_control_carries_no_correspondence():
    import torch.nn.functional as F

    from fedmuscle_flwr.aggregation import build_payloads

    g = torch.Generator().manual_seed(3)
    shared = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    noisy = {
        n: F.normalize(shared + 0.05 * torch.randn(8, 16, generator=g), dim=-1) for n in range(3)
    }
    payload = build_payloads(noisy, num_partners=2, tau_alpha=0.1, generator=g, device="cpu")[0]
    muscle = get_algorithm("muscle").objective(payload, tau=0.1, tau_alpha=0.1)
    control = get_algorithm("muscle-shuffled").objective(payload, tau=0.1, tau_alpha=0.1)
    aligned = noisy[0]  # the user sees what its partners see
    assert torch.allclose(control(aligned), muscle(aligned.roll(1, dims=0)))
    assert muscle(aligned) < 0.5 * control(aligned)  # alignment pays under Muscle only
    assert not get_algorithm("muscle-shuffled").supports_dense
