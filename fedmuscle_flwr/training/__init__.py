"""One user's local work: supervised steps, contrastive steps, evaluation, representations.

Plain PyTorch, device-agnostic, no Flower. The ClientApp builds a :class:`Trainer` from the
user's :class:`TrainSettings` (:meth:`TrainSettings.for_user`), drives it once per round and
saves its :meth:`Trainer.state_dict` between messages.

- :mod:`~fedmuscle_flwr.training.settings`: the settings, run config plus profile overrides;
- :mod:`~fedmuscle_flwr.training.trainer`: the trainer and its round steps;
- :mod:`~fedmuscle_flwr.training.gate`: the validation gates (``validation``, ``paired``).
"""

from fedmuscle_flwr.devices import resolve_device
from fedmuscle_flwr.training.gate import gate_decision
from fedmuscle_flwr.training.settings import TrainSettings
from fedmuscle_flwr.training.trainer import Trainer, contrastive_objective

__all__ = ["TrainSettings", "Trainer", "contrastive_objective", "gate_decision", "resolve_device"]
