"""The client-model contract: encoder -> projection to d (L2-normalised), and a task head.

:class:`Encoder` is what a model type provides (a timm or transformers backbone behind a
small surface); :class:`ClientModel` puts the FedMuscle parts around it:

    batch --encoder.pooled--> (B, F) --projection--> (B, d) --normalize--> z   encode_public
    batch --encoder.pooled--> (B, F) --------------------------> head -> (B, K)  pooled tasks
    batch --encoder.spatial-> [(B, C_i, h_i, w_i)] --decoder----> (B, K, H, W)  dense tasks

The task head reads encoder features, not the projection, so the contrastive and the
supervised objectives share the encoder only. The projection is linear by default;
:meth:`ClientModel.use_projection` swaps in a two-layer MLP (SimCLR's projection head),
which can discard what the partners' space asks for and the task does not need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmuscle_flwr.models.heads import DenseHead
from fedmuscle_flwr.models.lora import LoraSettings, LoraSpec, apply_lora
from fedmuscle_flwr.tasks import Batch, Task, get_task

__all__ = [
    "FROZEN_DIGEST_KEY",
    "PROJECTIONS",
    "ClientModel",
    "Encoder",
    "Modality",
    "make_projection",
]

Modality = str  # "image" | "text"; also the batch key the encoder reads
FROZEN_DIGEST_KEY = "__frozen_digest__"
#: Kinds of projection from the encoder's pooled features to the shared dimension d.
PROJECTIONS = ("linear", "mlp")


def make_projection(in_features: int, embed_dim: int, kind: str = "linear") -> nn.Module:
    """The projection F -> d: ``"linear"``, or ``"mlp"`` (Linear F->F, ReLU, Linear F->d)."""
    if kind == "linear":
        return nn.Linear(in_features, embed_dim)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, in_features), nn.ReLU(), nn.Linear(in_features, embed_dim)
        )
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")


class Encoder(nn.Module, ABC):
    """A backbone behind the surface :class:`ClientModel` needs.

    Subclasses set ``modality``, ``num_features`` and (for dense tasks)
    ``spatial_channels``, keep the wrapped network in ``self.backbone`` (where LoRA goes),
    and implement :meth:`pooled` (and :meth:`spatial` for vision encoders).

    Attributes
    ----------
    modality : str
        ``"image"`` or ``"text"``: the batch key the encoder reads.
    num_features : int
        Width F of the pooled features.
    spatial_channels : tuple of int
        Channels of the maps :meth:`spatial` returns, largest resolution first; empty when
        the encoder has no spatial features.
    default_lora_targets : tuple of str or str or None
        LoRA ``target_modules`` used when the config names none.
    """

    modality: Modality
    num_features: int
    spatial_channels: tuple[int, ...] = ()
    default_lora_targets: tuple[str, ...] | str | None = None
    backbone: nn.Module

    @abstractmethod
    def pooled(self, batch: Batch) -> Tensor:
        """Return pooled features (B, F) of ``batch[self.modality]``."""

    def spatial(self, batch: Batch) -> list[Tensor]:
        """Return feature maps [(B, C_i, h_i, w_i)], largest first (vision encoders)."""
        raise NotImplementedError(f"{type(self).__name__} has no spatial features")

    def input_size(self, batch: Batch) -> tuple[int, int]:
        """Return the (H, W) of the batch's images (dense heads upsample to it)."""
        image = batch[self.modality]
        return int(image.shape[-2]), int(image.shape[-1])

    @property
    def device(self) -> torch.device:
        """Device of the encoder's first parameter."""
        return next(self.parameters()).device


class ClientModel(nn.Module):
    """One user's model: encoder, projection to the shared dimension d, task head.

    Parameters
    ----------
    encoder : Encoder
        The backbone. With ``lora`` set, adapters are injected into
        ``encoder.backbone`` and its own weights are frozen.
    task : str or Task
        Task id (see :func:`fedmuscle_flwr.tasks.list_tasks`) or task object.
    num_classes : int
        Task outputs: classes, or labels for multi-label.
    embed_dim : int
        The shared representation dimension d.
    decoder_dim : int
        Width of the dense head (dense tasks only).
    lora : LoraSettings or mapping, optional
        LoRA settings (``rank``, ``alpha``, ``target_modules``, ``dropout``).

    Attributes
    ----------
    task : str
        The task id.
    task_type : Task
        The task object (loss, metrics).
    modality : str
        ``"image"`` or ``"text"``.
    embed_dim : int
        d, the width of :meth:`encode_public`'s rows.
    config : dict
        The builder config this model was built from (set by ``build_client_model``).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        task: str | Task,
        num_classes: int,
        embed_dim: int = 256,
        decoder_dim: int = 64,
        lora: LoraSpec = None,
    ) -> None:
        super().__init__()
        task_type = get_task(task) if isinstance(task, str) else task
        task_type.check_modality(encoder.modality)
        for label, value in (
            ("num_classes", num_classes),
            ("embed_dim", embed_dim),
            ("decoder_dim", decoder_dim),
        ):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        settings = LoraSettings.from_config(lora)
        if settings is not None:
            apply_lora(encoder.backbone, settings, encoder.default_lora_targets)
        self.task = task_type.name
        self.task_type = task_type
        self.modality = encoder.modality
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.lora = settings
        self.config: dict[str, Any] = {}
        self.encoder = encoder
        self.projection: nn.Module = make_projection(encoder.num_features, self.embed_dim)
        self.head: nn.Module
        if task_type.head == "dense":
            if not encoder.spatial_channels:
                raise ValueError(
                    f"task {self.task!r} needs spatial features, which "
                    f"{type(encoder).__name__} does not provide"
                )
            self.head = DenseHead(encoder.spatial_channels, self.num_classes, int(decoder_dim))
        else:
            self.head = nn.Linear(encoder.num_features, self.num_classes)

    def use_projection(self, kind: str, *, seed: int) -> None:
        """Replace the projection by a new one of ``kind`` (:data:`PROJECTIONS`).

        Built under ``seed`` with the global RNG state left as it was, so the encoder and
        the head keep the weights they were built with. Call before an optimiser is made.
        """
        device = next(self.projection.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            projection = make_projection(self.encoder.num_features, self.embed_dim, kind)
        self.projection = projection.to(device)

    # ------------------------------------------------------------------ forward passes
    def encode_public(self, batch: Batch) -> Tensor:
        """Return the FedMuscle representation: (B, d), rows of unit L2 norm."""
        return F.normalize(self.projection(self.encoder.pooled(batch)), dim=-1)

    def encode_public_with_logits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Return the representation (B, d) and the task logits (B, K) from one encoder pass.

        For pooled tasks only (distillation of class predictions on the public batch).
        """
        if self.task_type.head != "pooled":
            raise ValueError(f"task {self.task_type.name!r} has no per-sample logits")
        pooled = self.encoder.pooled(batch)
        return F.normalize(self.projection(pooled), dim=-1), self.head(pooled)

    def forward_task(self, batch: Batch) -> Tensor:
        """Return task logits: (B, K), or (B, K, H, W) at input resolution (dense tasks)."""
        if self.task_type.head == "dense":
            features = self.encoder.spatial(batch)
            return self.head(features, self.encoder.input_size(batch))
        return self.head(self.encoder.pooled(batch))

    def forward(self, batch: Batch) -> Tensor:
        """Same as :meth:`forward_task`."""
        return self.forward_task(batch)

    def task_loss(self, batch: Batch) -> Tensor:
        """Return the task's loss of :meth:`forward_task` on ``batch``."""
        return self.task_type.loss(self.forward_task(batch), batch)

    # ------------------------------------------------------------------ training surface
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Return the parameters that train (adapters or encoder, projection, head)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.parameters()).device

    def _frozen_digest(self) -> Tensor | None:
        """Order-sensitive float64 sums over the frozen weights (a guard, not a hash)."""
        frozen = [p for p in self.parameters() if not p.requires_grad]
        if not frozen:
            return None
        digest = torch.zeros(4, dtype=torch.float64)
        with torch.no_grad():
            for position, param in enumerate(frozen, start=1):
                total = param.detach().double().sum().cpu()
                digest += torch.stack(
                    [
                        total,
                        total * position,
                        param.detach().double().abs().sum().cpu(),
                        total.new_tensor(param.numel()),
                    ]
                )
        return digest

    def _checkpoint_keys(self) -> set[str]:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        buffers = {name for name, _ in self.named_buffers()}
        return {key for key in self.state_dict() if key in trainable or key in buffers}

    def state_for_checkpoint(self) -> dict[str, Tensor]:
        """Return what is needed to restore this model's outputs, on the CPU.

        That is every trainable parameter (adapters or the whole encoder, projection,
        head) and every buffer (e.g. BatchNorm statistics). Frozen weights are not
        included: they are rebuilt from the config (and the seed or pretrained weights);
        a digest of them, under ``FROZEN_DIGEST_KEY``, lets :meth:`load_checkpoint_state`
        refuse a model whose frozen weights differ.
        """
        keys = self._checkpoint_keys()
        state = {
            key: value.detach().cpu().clone()
            for key, value in self.state_dict().items()
            if key in keys
        }
        digest = self._frozen_digest()
        if digest is not None:
            state[FROZEN_DIGEST_KEY] = digest
        return state

    def load_checkpoint_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore a :meth:`state_for_checkpoint` dict into this model.

        Raises
        ------
        ValueError
            If keys are missing or unexpected, a shape differs, or the frozen weights of
            this model differ from those of the model that saved the state.
        """
        state = dict(state)
        saved_digest = state.pop(FROZEN_DIGEST_KEY, None)
        digest = self._frozen_digest()
        if (saved_digest is None) != (digest is None) or (
            digest is not None
            and saved_digest is not None
            and not torch.allclose(saved_digest.double(), digest, rtol=1e-9, atol=0.0)
        ):
            raise ValueError(
                "checkpoint was saved from a model with different frozen weights "
                "(another config, seed or pretrained source); rebuild the model as it was"
            )
        expected = self._checkpoint_keys()
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit this model: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint does not fit this model: {exc}") from exc

    def extra_repr(self) -> str:
        """Task, modality and d, shown in ``repr(model)``."""
        return f"task={self.task!r}, modality={self.modality!r}, embed_dim={self.embed_dim}"
