"""The client-model registry: ``register_client_model``, ``build_client_model``, ...

A model type is a builder: a function taking keyword config (``task``, ``num_classes``,
``embed_dim``, ``pretrained``, ``lora``, size knobs) and returning a
:class:`~fedmuscle_flwr.models.base.ClientModel`. Built-in types register when
:mod:`fedmuscle_flwr.models` is imported; other packages add types through the
entry-point group ``fedmuscle.models`` (``name = "package.module:builder"``), read on the
first lookup or listing. See ``docs/plugins.md``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

from fedmuscle_flwr._registry import Registry
from fedmuscle_flwr.models.base import ClientModel

__all__ = [
    "ENTRY_POINT_GROUP",
    "MODELS",
    "Builder",
    "build_client_model",
    "list_client_models",
    "register_client_model",
    "shared_arguments",
]

ENTRY_POINT_GROUP = "fedmuscle.models"

Builder = Callable[..., ClientModel]
BuilderT = TypeVar("BuilderT", bound=Callable[..., ClientModel])


def _coerce_builder(name: str, obj: object) -> Builder:
    if not callable(obj):
        raise TypeError(
            f"client model {name!r} must be registered with a builder callable, "
            f"got {type(obj).__name__}"
        )
    return obj


MODELS: Registry[Builder] = Registry("client model", ENTRY_POINT_GROUP, _coerce_builder)


def register_client_model(name: str, *, exist_ok: bool = False) -> Callable[[BuilderT], BuilderT]:
    """Register a client-model builder under ``name`` (function decorator).

    Parameters
    ----------
    name : str
        The model type's name, as used in configs and :func:`build_client_model`.
    exist_ok : bool
        Replace an existing type of that name instead of raising ``ValueError``.

    Returns
    -------
    callable
        A decorator that registers the builder and returns it unchanged.

    Examples
    --------
    >>> @register_client_model("my-model")  # doctest: +SKIP
    ... def build_my_model(*, task, num_classes, embed_dim=256, **size):
    ...     return ClientModel(MyEncoder(**size), task=task, num_classes=num_classes,
    ...                        embed_dim=embed_dim)
    """
    return MODELS.decorator(name, exist_ok=exist_ok)


def shared_arguments(*creators: Callable[..., Any]) -> Callable[[BuilderT], BuilderT]:
    """Show a builder's family arguments in its signature (function decorator).

    A family of builders declares its shared keyword arguments once, as the keyword-only
    parameters of private ``creators``; each builder declares only its own and passes
    ``**kwargs`` on. The decorated builder has the signature it accepts: the creators'
    keyword-only parameters (the builder's own declaration of one wins, e.g. another
    default), then the builder's other parameters. Config checks read that signature, and
    a call with a key outside it, or without a required one, fails with ``TypeError``
    before anything is built.
    """
    shared: dict[str, inspect.Parameter] = {}
    for creator in creators:
        for name, p in inspect.signature(creator).parameters.items():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                shared.setdefault(name, p)

    def decorator(builder: BuilderT) -> BuilderT:
        own = {
            name: p
            for name, p in inspect.signature(builder).parameters.items()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        }
        merged = [own.pop(name, p) for name, p in shared.items()]
        signature = inspect.signature(builder).replace(parameters=[*merged, *own.values()])

        @functools.wraps(builder)
        def checked(**cfg: Any) -> ClientModel:
            try:
                signature.bind(**cfg)
            except TypeError as err:
                raise TypeError(f"{builder.__name__}() {err}") from None
            return builder(**cfg)

        target: Any = checked
        target.__signature__ = signature
        return cast(BuilderT, checked)

    return decorator


def build_client_model(name: str, *, seed: int | None = 0, **cfg: Any) -> ClientModel:
    """Build a client model of type ``name`` from its config.

    Parameters
    ----------
    name : str
        A registered type (see :func:`list_client_models`).
    seed : int or None
        Seed of the random initialisation; the same name, config and seed give the same
        weights. The global RNG state is left as it was. ``None`` draws from the global
        RNG instead.
    **cfg
        The builder's keyword config (``task``, ``num_classes``, ...).

    Returns
    -------
    ClientModel
        The model, on the CPU, in training mode, with ``model.config`` holding
        ``{"model": name, "seed": seed, **cfg}``.

    Raises
    ------
    fedmuscle_flwr._registry.UnknownNameError
        (a ``KeyError``) listing the known types, for an unknown ``name``.
    TypeError
        If the builder does not return a :class:`ClientModel`, or rejects a config key.
    """
    builder = MODELS.get(name)
    if seed is None:
        model = builder(**cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = builder(**cfg)
    if not isinstance(model, ClientModel):
        raise TypeError(
            f"builder of client model {name!r} ({MODELS.source(name)}) returned "
            f"{type(model).__name__}, not a ClientModel"
        )
    model.config = {"model": name, "seed": seed, **cfg}
    return model


def list_client_models() -> list[str]:
    """Return the names of all client-model types (built-in and plug-in), sorted."""
    return MODELS.names()
