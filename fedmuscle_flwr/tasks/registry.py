"""The task registry: ``register_task``, ``get_task``, ``list_tasks``.

Built-in tasks register themselves when :mod:`fedmuscle_flwr.tasks` is imported. Other
packages add tasks through the entry-point group ``fedmuscle.tasks``; each entry point's
value is a :class:`~fedmuscle_flwr.tasks.base.Task` subclass (built with no arguments) or
instance, registered under the entry point's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fedmuscle_flwr._registry import Registry, named_instance_of
from fedmuscle_flwr.tasks.base import Task

__all__ = ["ENTRY_POINT_GROUP", "TASKS", "get_task", "list_tasks", "register_task"]

ENTRY_POINT_GROUP = "fedmuscle.tasks"

TaskT = TypeVar("TaskT", bound="type[Task] | Task")


TASKS: Registry[Task] = Registry("task", ENTRY_POINT_GROUP, named_instance_of(Task, "task"))


def register_task(name: str, *, exist_ok: bool = False) -> Callable[[TaskT], TaskT]:
    """Register a task type under ``name`` (class decorator).

    Parameters
    ----------
    name : str
        The task id (``"image-classification"``, ...).
    exist_ok : bool
        Replace an existing task of that name instead of raising ``ValueError``.

    Returns
    -------
    callable
        A decorator for a :class:`Task` subclass (instantiated with no arguments) or a
        :class:`Task` instance; it returns its argument unchanged.

    Examples
    --------
    >>> @register_task("my-task")  # doctest: +SKIP
    ... class MyTask(Task): ...
    """
    return TASKS.decorator(name, exist_ok=exist_ok)


def get_task(name: str) -> Task:
    """Return the task registered as ``name``.

    Raises
    ------
    fedmuscle_flwr._registry.UnknownNameError
        (a ``KeyError``) naming the known tasks, when ``name`` is unknown.
    """
    return TASKS.get(name)


def list_tasks() -> list[str]:
    """Return the names of all registered tasks (built-in and plug-in), sorted."""
    return TASKS.names()
