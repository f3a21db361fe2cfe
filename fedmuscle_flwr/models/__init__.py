"""Client models: a registry of model types and the contract every model follows.

Public API::

    register_client_model(name, *, exist_ok=False)   # decorator on a builder
    build_client_model(name, *, seed=0, **cfg) -> ClientModel
    list_client_models() -> list[str]

Built-in types: ``vit``, ``resnet``, ``convnext``, ``small-cnn``, ``efficientnet-lite0``
(timm), ``segformer``, ``bert``, ``distilbert``, ``minilm-l6`` (transformers). Other
packages add types through the entry-point group ``fedmuscle.models`` (docs/plugins.md).
"""

from fedmuscle_flwr._registry import PluginWarning, UnknownNameError

# Built-in model types register on import (timm/transformers are imported inside them).
from fedmuscle_flwr.models import segmentation, text, vision  # noqa: F401
from fedmuscle_flwr.models.base import FROZEN_DIGEST_KEY, ClientModel, Encoder
from fedmuscle_flwr.models.heads import DenseHead
from fedmuscle_flwr.models.images import ImageInput
from fedmuscle_flwr.models.lora import LoraSettings, apply_lora, is_lora_parameter
from fedmuscle_flwr.models.pretrained import MissingPackageError, resolve_pretrained
from fedmuscle_flwr.models.registry import (
    ENTRY_POINT_GROUP,
    MODELS,
    Builder,
    build_client_model,
    list_client_models,
    register_client_model,
)
from fedmuscle_flwr.models.tokenizer import HashingTokenizer

__all__ = [
    "ENTRY_POINT_GROUP",
    "FROZEN_DIGEST_KEY",
    "MODELS",
    "Builder",
    "ClientModel",
    "DenseHead",
    "Encoder",
    "HashingTokenizer",
    "ImageInput",
    "LoraSettings",
    "MissingPackageError",
    "PluginWarning",
    "UnknownNameError",
    "apply_lora",
    "build_client_model",
    "is_lora_parameter",
    "list_client_models",
    "register_client_model",
    "resolve_pretrained",
]
