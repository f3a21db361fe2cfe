"""A small name -> object registry with an entry-point group for plug-ins.

Shared by the client-model registry (:mod:`fedmuscle_flwr.models.registry`) and the task
registry (:mod:`fedmuscle_flwr.tasks.registry`). The shape follows timm's ``_registry.py``
(one decorator fills one dict; an unknown name fails with the known names) and
transformers' ``auto_factory.py`` (registration refuses to shadow a name unless asked;
plug-ins are imported lazily, on the first lookup or listing).

Entry points are read with :func:`importlib.metadata.entry_points`. Each entry point's
name is the registered name and its value (``package.module:attribute``) the object. A
plug-in that fails to import, or whose name is already taken, gives a warning naming it
and is left out; the registry itself keeps working.
"""

from __future__ import annotations

import difflib
import threading
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Obj = TypeVar("Obj")

__all__ = ["PluginWarning", "Registry", "UnknownNameError", "named_instance_of"]


class UnknownNameError(KeyError):
    """A name that no registry entry (built-in or plug-in) answers to.

    Subclasses :class:`KeyError` so ``except KeyError`` keeps working, but prints its
    message as is (``KeyError`` would show it quoted).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginWarning(UserWarning):
    """An entry-point plug-in could not be loaded or registered and was left out."""


def named_instance_of(base: type, kind: str) -> Callable[[str, object], Any]:
    """A ``coerce`` for registries of named objects (tasks, algorithms).

    It takes a ``base`` subclass (built with no arguments) or instance, refuses anything
    else with a ``TypeError``, refuses an object whose ``name`` is set to another name,
    and sets ``name`` to the registered one.
    """

    def coerce(name: str, obj: object) -> Any:
        value: Any = obj() if isinstance(obj, type) and issubclass(obj, base) else obj
        if not isinstance(value, base):
            raise TypeError(
                f"{kind} {name!r} must be a {base.__name__} subclass or instance, "
                f"got {type(obj).__name__}"
            )
        own = getattr(value, "name", "")
        if own and own != name:
            raise ValueError(f"{kind} object is named {own!r} but registered as {name!r}")
        named: Any = value  # a Task or Algorithm: both carry ``name``
        named.name = name
        return named

    return coerce


class Registry(Generic[T]):
    """Names to objects, filled by a decorator and by one entry-point group.

    Parameters
    ----------
    kind : str
        What the registry holds, in words, for error messages (``"client model"``).
    group : str
        The entry-point group read lazily on the first lookup or listing.
    coerce : callable
        ``coerce(name, obj) -> T``: called on every object before it is registered (from
        code or from an entry point); returns what to store, or raises ``TypeError``
        when the object is not acceptable.
    """

    def __init__(self, kind: str, group: str, coerce: Callable[[str, object], T]) -> None:
        self.kind = kind
        self.group = group
        self._coerce = coerce
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._plugins_loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ registration
    def add(self, name: str, obj: object, *, exist_ok: bool = False, source: str = "code") -> T:
        """Register ``obj`` under ``name``.

        Parameters
        ----------
        name : str
            Non-empty name without surrounding whitespace.
        obj : object
            The object to register; passed through the registry's ``coerce``.
        exist_ok : bool
            Replace an existing entry of the same name instead of failing.
        source : str
            Where the entry came from, shown in error messages.

        Returns
        -------
        T
            What was stored (``obj`` itself, for the model registry).

        Raises
        ------
        ValueError
            If ``name`` is empty or already registered and ``exist_ok`` is False.
        TypeError
            If the registry's ``coerce`` rejects ``obj``.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        value = self._coerce(name, obj)
        with self._lock:
            if name in self._entries and not exist_ok:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (from "
                    f"{self._sources[name]}); pass exist_ok=True to replace it"
                )
            self._entries[name] = value
            self._sources[name] = source
        return value

    def decorator(self, name: str, *, exist_ok: bool = False) -> Callable[[Obj], Obj]:
        """A decorator that registers its argument under ``name`` and returns it unchanged."""

        def register(obj: Obj) -> Obj:
            self.add(name, obj, exist_ok=exist_ok)
            return obj

        return register

    def remove(self, name: str) -> None:
        """Forget ``name`` (a no-op when it is not registered); mostly for tests."""
        with self._lock:
            self._entries.pop(name, None)
            self._sources.pop(name, None)

    # ------------------------------------------------------------------ plug-ins
    def load_plugins(self, *, force: bool = False) -> list[str]:
        """Import and register the entry points of ``self.group``.

        Parameters
        ----------
        force : bool
            Read the group again even if it was read before (after installing a package,
            or after changing ``sys.path``).

        Returns
        -------
        list of str
            The names registered by this call.
        """
        with self._lock:
            if self._plugins_loaded and not force:
                return []
            self._plugins_loaded = True
            added: list[str] = []
            for ep in entry_points(group=self.group):
                source = f"entry point {ep.name!r} = {ep.value!r}"
                if ep.name in self._entries:
                    if self._sources.get(ep.name) != source:
                        warnings.warn(
                            f"{self.kind} plug-in {source} is ignored: the name is already "
                            f"registered (from {self._sources[ep.name]})",
                            PluginWarning,
                            stacklevel=2,
                        )
                    continue
                try:
                    obj = ep.load()
                    self.add(ep.name, obj, source=source)
                except Exception as exc:  # a broken plug-in must not break the registry
                    warnings.warn(
                        f"{self.kind} plug-in {source} could not be loaded and is left out: "
                        f"{type(exc).__name__}: {exc}",
                        PluginWarning,
                        stacklevel=2,
                    )
                    continue
                added.append(ep.name)
            return added

    # ------------------------------------------------------------------ lookup
    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises
        ------
        UnknownNameError
            If no built-in or plug-in entry has that name; the message lists the known
            names and the closest matches.
        """
        self.load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = self.names()
            close = difflib.get_close_matches(str(name), known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}. "
                f"Add one with the register decorator or an entry point in group "
                f"{self.group!r}."
            ) from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        self.load_plugins()
        return sorted(self._entries)

    def names_so_far(self) -> list[str]:
        """Return the names registered until now, sorted, without reading the plug-ins."""
        with self._lock:
            return sorted(self._entries)

    def source(self, name: str) -> str:
        """Return where ``name`` was registered from (``"code"`` or the entry point)."""
        self.get(name)
        return self._sources[name]

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
