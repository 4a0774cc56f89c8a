"""An event hook, as Locust's ``EventHook``: listeners subscribe, the producer fires.

The extension point for whatever observes a run: the sampler fires its samples, the sink and
live progress are listeners, and neither knows of the other. A listener that raises is logged
and the others still get the event: an observer's bug never stops the producer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["EventHook"]

log = logging.getLogger(__name__)


class EventHook:
    """Listeners called in the order they were added, each with the fired arguments."""

    def __init__(self, name: str = "event") -> None:
        self.name = name
        self.listeners: list[Callable[..., Any]] = []

    def add_listener(self, listener: Callable[..., Any]) -> Callable[..., Any]:
        """Subscribe ``listener``; returns it, so this works as a decorator too."""
        self.listeners.append(listener)
        return listener

    def remove_listener(self, listener: Callable[..., Any]) -> None:
        self.listeners.remove(listener)

    def fire(self, *args: Any, **kwargs: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(*args, **kwargs)
            except Exception:  # one observer's bug must not stop the producer or the others
                log.exception("a listener of %s failed", self.name)
