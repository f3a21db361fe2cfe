"""Algorithms as registered objects: ``register_algorithm``, ``get_algorithm``, ``list_algorithms``.

An algorithm says what its users need from the server and what they minimise with it:

- ``collaborative``: whether users exchange representations at all (``local`` does not);
- ``needs_log_alpha``: whether the payload carries the pairwise log-alpha factors (Muscle)
  or only the partners' representations (pairwise, ensemble);
- ``supports_dense``: whether ``payload = "dense"`` (the paper-literal S_n, alpha_n) applies;
- :meth:`Algorithm.objective`: the contrastive loss of one round, ``z -> loss``, from the
  user's :class:`~fedmuscle_flwr.payload.UserPayload`.

The strategy, the wire and the trainer read only these, so a new algorithm (or a variant
of one) is one class here or in another package, registered with the decorator or through
the entry-point group ``fedmuscle.algorithms`` (value: an :class:`Algorithm` subclass or
instance), and no app file changes:

    @register_algorithm("cosine")
    class Cosine(Algorithm):
        def objective(self, payload, *, tau, tau_alpha):
            others = payload.others
            return lambda z: 1 - (z[None] * others.to(z.device)).sum(-1).mean()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

from fedmuscle_flwr._registry import Registry, named_instance_of
from fedmuscle_flwr.loss import MuscleObjective, dense_muscle_loss, ensemble_loss, pairwise_loss
from fedmuscle_flwr.payload import UserPayload

__all__ = [
    "ALGORITHMS",
    "ENTRY_POINT_GROUP",
    "Algorithm",
    "get_algorithm",
    "list_algorithms",
    "register_algorithm",
]

ENTRY_POINT_GROUP = "fedmuscle.algorithms"

Objective = Callable[[Tensor], Tensor]


class Algorithm:
    """What an algorithm needs from the server and the loss its users minimise.

    Attributes
    ----------
    name : str
        The registered name (set on registration).
    collaborative : bool
        Whether users exchange representations.
    needs_log_alpha : bool
        Whether the payload carries the pairwise log-alpha factors.
    supports_dense : bool
        Whether the dense payload form applies.
    """

    name: str = ""
    collaborative: bool = True
    needs_log_alpha: bool = False
    supports_dense: bool = False

    def objective(self, payload: UserPayload, *, tau: float, tau_alpha: float) -> Objective:
        """The round's contrastive loss as ``z -> loss`` (z: (B, d) unit rows, with grad)."""
        raise ValueError(f"algorithm {self.name!r} has no contrastive loss")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


AlgorithmT = TypeVar("AlgorithmT", bound="type[Algorithm] | Algorithm")


ALGORITHMS: Registry[Algorithm] = Registry(
    "algorithm", ENTRY_POINT_GROUP, named_instance_of(Algorithm, "algorithm")
)


def register_algorithm(name: str, *, exist_ok: bool = False) -> Callable[[AlgorithmT], AlgorithmT]:
    """Register an algorithm under ``name`` (class decorator; also takes an instance)."""
    return ALGORITHMS.decorator(name, exist_ok=exist_ok)


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; an unknown name lists the known ones."""
    return ALGORITHMS.get(name)


def list_algorithms() -> list[str]:
    """Names of every registered algorithm (built-in and plug-in), sorted."""
    return ALGORITHMS.names()


# ---------------------------------------------------------------------- built-ins
@register_algorithm("local")
class Local(Algorithm):
    """No collaboration: the reference every Delta is measured against."""

    collaborative = False


@register_algorithm("pairwise")
class Pairwise(Algorithm):
    """Sum of InfoNCE against each partner (alpha == 1)."""

    def objective(self, payload: UserPayload, *, tau: float, tau_alpha: float) -> Objective:
        """Pairwise InfoNCE against ``payload.others``."""
        others = payload.others
        return lambda z: pairwise_loss(z, others.to(z.device), tau=tau)


@register_algorithm("ensemble")
class Ensemble(Algorithm):
    """InfoNCE against the mean of the partners' representations (CreamFL-like)."""

    def objective(self, payload: UserPayload, *, tau: float, tau_alpha: float) -> Objective:
        """InfoNCE against the partners' normalised mean."""
        others = payload.others
        return lambda z: ensemble_loss(z, others.to(z.device), tau=tau)


@register_algorithm("muscle")
class Muscle(Algorithm):
    """The exact Muscle loss, factored (default) or from the dense S_n, alpha_n."""

    needs_log_alpha = True
    supports_dense = True

    def objective(self, payload: UserPayload, *, tau: float, tau_alpha: float) -> Objective:
        """Muscle against the payload: dense when S_n and alpha_n came, else factored."""
        if payload.aggregated is not None and payload.log_alpha is not None:
            aggregated, log_alpha = payload.aggregated, payload.log_alpha
            return lambda z: dense_muscle_loss(
                z, aggregated.to(z.device), log_alpha.to(z.device), tau=tau
            )
        objective = MuscleObjective(
            payload.others, payload.log_alpha_pairs, tau=tau, tau_alpha=tau_alpha
        )
        return lambda z: objective(z)


@register_algorithm("muscle-shuffled")
class ShuffledMuscle(Muscle):
    """A control, not a method: Muscle with each public sample paired to the wrong partners.

    The user's row i is contrasted with its partners' rows for sample i + 1 (a fixed
    derangement of a random batch), so the step is as large as Muscle's but carries no
    information about what the partners see. A gain under this algorithm comes from the
    validation gate's choices or from the extra updates, not from collaboration.
    """

    supports_dense = False

    def objective(self, payload: UserPayload, *, tau: float, tau_alpha: float) -> Objective:
        """Muscle against the payload, with the user's rows rolled by one sample."""
        muscle = MuscleObjective(
            payload.others, payload.log_alpha_pairs, tau=tau, tau_alpha=tau_alpha
        )
        return lambda z: muscle(z.roll(1, dims=0))
