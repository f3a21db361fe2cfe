"""LoRA adapters through peft: settings from config, injection, freezing the base.

When LoRA is on, the encoder's own weights are frozen and only the ``lora_*`` adapter
weights of the encoder train (plus the client model's projection and head, which live
outside the encoder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["LoraSettings", "LoraSpec", "apply_lora", "is_lora_parameter"]

_ALIASES = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters.

    Parameters
    ----------
    rank : int
        Adapter rank r (>= 1).
    alpha : float
        Scaling numerator; the update is scaled by ``alpha / rank``.
    target_modules : list of str or str, optional
        Module names (suffix match) or one regular expression (full match) naming the
        layers that get adapters; ``None`` uses the model type's default.
    dropout : float
        Dropout on the adapter input, in [0, 1).
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | str | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, Sequence) and not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise ValueError("LoRA target_modules must not be empty")

    @classmethod
    def from_config(cls, config: LoraSpec) -> LoraSettings | None:
        """Build settings from a config mapping (``None`` means no LoRA).

        Accepts ``rank``/``r``, ``alpha``/``lora_alpha``, ``target_modules``,
        ``dropout``/``lora_dropout``; any other key is a ``ValueError``.
        """
        if config is None or isinstance(config, LoraSettings):
            return config
        if not isinstance(config, Mapping):
            raise TypeError(f"lora must be None or a mapping, got {type(config).__name__}")
        kwargs = {_ALIASES.get(key, key): value for key, value in config.items()}
        unknown = sorted(set(kwargs) - {"rank", "alpha", "target_modules", "dropout"})
        if unknown:
            raise ValueError(
                f"unknown LoRA setting(s) {unknown}; known: rank, alpha, target_modules, dropout"
            )
        return cls(**kwargs)


#: What a builder's ``lora`` argument takes: settings, a config mapping, or None (no LoRA).
LoraSpec = LoraSettings | Mapping[str, Any] | None


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter name (as in ``named_parameters``) belongs to a LoRA adapter."""
    return "lora_" in name


def apply_lora(
    module: nn.Module,
    settings: LoraSettings,
    default_targets: Sequence[str] | str | None,
) -> nn.Module:
    """Inject LoRA adapters into ``module`` in place and freeze everything else in it.

    Parameters
    ----------
    module : torch.nn.Module
        The encoder backbone (a timm or transformers model).
    settings : LoraSettings
        Rank, alpha, dropout and target modules.
    default_targets : list of str or str, optional
        Used when ``settings.target_modules`` is ``None``.

    Returns
    -------
    torch.nn.Module
        ``module`` itself, with adapters; only ``lora_*`` parameters require grad.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = settings.target_modules if settings.target_modules is not None else default_targets
    if not targets:
        raise ValueError(
            "this model type has no default LoRA target modules; set lora.target_modules"
        )
    alpha: Any = float(settings.alpha)  # peft annotates int; the scale alpha / r is a float
    config = LoraConfig(
        r=int(settings.rank),
        lora_alpha=alpha,
        lora_dropout=float(settings.dropout),
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        bias="none",
    )
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:
        raise ValueError(f"LoRA target_modules {targets!r} do not fit this model: {exc}") from exc
    for name, param in module.named_parameters():
        param.requires_grad_(is_lora_parameter(name))
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"LoRA target_modules {targets!r} matched no layer of the model")
    return module
