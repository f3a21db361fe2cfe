"""SegFormer (Mix Transformer) encoder from transformers: the ``segformer`` model type.

Built from a ``SegformerConfig`` offline (default sizes: MiT-b0), from a local
``save_pretrained`` directory, or from the hub (``nvidia/mit-b0``) when asked. Dense tasks
use its four hierarchical feature maps through the shared light decoder
(:class:`~fedmuscle_flwr.models.heads.DenseHead`, SegFormer's all-MLP design); pooled
features are the spatial mean of the last stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from fedmuscle_flwr.models.base import ClientModel, Encoder
from fedmuscle_flwr.models.images import ImageInput, create_image_model
from fedmuscle_flwr.models.pretrained import PretrainedSource, resolve_pretrained
from fedmuscle_flwr.models.registry import register_client_model, shared_arguments
from fedmuscle_flwr.tasks import Batch

__all__ = ["SegformerEncoder", "build_segformer"]


def _attention_targets(backbone: nn.Module) -> tuple[str, ...]:
    """Query/value projection names: ``q_proj``/``v_proj`` (transformers 5) or older."""
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    return ("q_proj", "v_proj") if "q_proj" in names else ("query", "value")


class SegformerEncoder(Encoder):
    """A transformers ``SegformerModel`` as an image encoder."""

    modality = "image"

    def __init__(self, backbone: nn.Module, *, normalize_input: bool = True) -> None:
        super().__init__()
        self.input = ImageInput(normalize=normalize_input)
        self.backbone = backbone
        config: Any = backbone.config
        sizes = list(config.hidden_sizes)
        self.num_features = int(sizes[-1])
        self.spatial_channels = tuple(int(s) for s in sizes)
        self.default_lora_targets = _attention_targets(backbone)

    def spatial(self, batch: Batch) -> list[Tensor]:
        """The four stage outputs (B, C_i, H / 4 / 2^i, W / 4 / 2^i)."""
        out = self.backbone(pixel_values=self.input(batch), output_hidden_states=True)
        return list(out.hidden_states)

    def pooled(self, batch: Batch) -> Tensor:
        """Spatial mean of the last stage (B, hidden_sizes[-1])."""
        last: Tensor = self.backbone(pixel_values=self.input(batch)).last_hidden_state
        return last.mean(dim=(-2, -1))


def _create_segformer(hub_name: str, sizes: Mapping[str, list[int]], **kwargs: Any) -> ClientModel:
    """Build a SegFormer client model; ``kwargs`` are the shared arguments of image types.

    Parameters
    ----------
    hub_name : str
        Hub repository used with ``pretrained="hub"``.
    sizes : mapping
        ``SegformerConfig`` overrides (untrained models only).
    **kwargs
        See :func:`.create_image_model`.
    """
    from transformers import SegformerConfig, SegformerModel

    def make_encoder(pretrained: PretrainedSource, normalize_input: bool) -> SegformerEncoder:
        source = resolve_pretrained(pretrained)
        backbone: nn.Module
        if source.kind == "none":
            config: Any = SegformerConfig
            backbone = SegformerModel(config(**sizes))
        elif sizes:
            raise ValueError(
                f"size knobs {sorted(sizes)} apply only to pretrained=False; pretrained "
                "weights come with their own sizes"
            )
        else:
            location = hub_name if source.kind == "hub" else str(source.path)
            backbone = SegformerModel.from_pretrained(location)
        return SegformerEncoder(backbone, normalize_input=normalize_input)

    return create_image_model(make_encoder, **kwargs)


@register_client_model("segformer")
@shared_arguments(create_image_model)
def build_segformer(
    *,
    image_size: int = 512,
    hub_name: str = "nvidia/mit-b0",
    depths: Sequence[int] | None = None,
    hidden_sizes: Sequence[int] | None = None,
    num_attention_heads: Sequence[int] | None = None,
    sr_ratios: Sequence[int] | None = None,
    **kwargs: Any,
) -> ClientModel:
    """SegFormer encoder (transformers) with the light all-MLP decoder.

    Parameters
    ----------
    image_size : int
        Informative; any size divisible by 32 runs.
    hub_name : str
        Hub repository used with ``pretrained="hub"``.
    depths, hidden_sizes, num_attention_heads, sr_ratios : sequence of int, optional
        Per-stage overrides of ``SegformerConfig`` (4 stages). Tiny test config:
        ``depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 32, 32),
        num_attention_heads=(1, 1, 2, 2)``.
    **kwargs
        The shared arguments of image types (``task``, ``num_classes``, ``embed_dim``,
        ``pretrained``, ``lora``, ``decoder_dim``, ``normalize_input``): see
        :func:`.create_image_model`.
    """
    knobs = {
        "depths": depths,
        "hidden_sizes": hidden_sizes,
        "num_attention_heads": num_attention_heads,
        "sr_ratios": sr_ratios,
    }
    sizes = {key: list(value) for key, value in knobs.items() if value is not None}
    return _create_segformer(hub_name, sizes, image_size=image_size, **kwargs)
