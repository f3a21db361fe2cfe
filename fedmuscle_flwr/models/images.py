"""What image model types share: batch checks and normalisation, and their arguments."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fedmuscle_flwr.models.base import ClientModel, Encoder
from fedmuscle_flwr.models.lora import LoraSpec
from fedmuscle_flwr.models.pretrained import PretrainedSource
from fedmuscle_flwr.tasks import Batch

__all__ = ["ImageInput", "create_image_model"]


class ImageInput(nn.Module):
    """Take ``batch["image"]`` (B, 3 or 1, H, W) in [0, 1] to the backbone's input.

    Grey images are repeated to 3 channels; with ``normalize`` the mean/std the backbone
    was trained with are applied.

    Parameters
    ----------
    mean, std : sequence of float
        Per-channel normalisation (ignored when ``normalize`` is False).
    normalize : bool
        Apply ``(x - mean) / std``.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        *,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, batch: Batch) -> Tensor:
        """Return the float (B, 3, H, W) tensor the backbone takes."""
        if "image" not in batch:
            raise KeyError(f"an image model needs batch key 'image'; the batch has {sorted(batch)}")
        image = batch["image"]
        if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"batch['image'] must be a (B, 3, H, W) tensor, got {shape}")
        x = image.to(device=self.mean.device, dtype=self.mean.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x


def create_image_model(
    make_encoder: Callable[[PretrainedSource, bool], Encoder],
    *,
    task: str,
    num_classes: int,
    embed_dim: int = 256,
    image_size: int = 224,
    pretrained: PretrainedSource = False,
    lora: LoraSpec = None,
    decoder_dim: int = 64,
    normalize_input: bool = True,
) -> ClientModel:
    """Build an image client model; the keyword-only arguments are shared by image types.

    Parameters
    ----------
    make_encoder : callable
        ``make_encoder(pretrained, normalize_input)`` builds the image encoder.
    task, num_classes, embed_dim, pretrained, lora, decoder_dim, normalize_input
        See :class:`~fedmuscle_flwr.models.base.ClientModel` and ``models.pretrained``.
    image_size : int
        Informative (any size runs); a builder whose backbone needs it declares it.
    """
    del image_size
    encoder = make_encoder(pretrained, normalize_input)
    return ClientModel(
        encoder,
        task=task,
        num_classes=num_classes,
        embed_dim=embed_dim,
        decoder_dim=decoder_dim,
        lora=lora,
    )
