"""ipywidgets bound to synced signals: a slider moved in one notebook moves in the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.signals import Observation, Signal
from ..peer.sync import followed, sync_signal


class _Binding:
    """One widget trait tied to one signal, both ways (or one way, through a transform)."""

    def __init__(self, widget: Any, trait: str, signal: Signal[Any], transform: Callable[[Any], Any] | None):
        self.widget = widget
        self.trait = trait
        self.signal = signal
        self.transform = transform
        self._applying = False
        self.observation: Observation = signal.observe(self.to_widget)
        if transform is None:
            widget.observe(self.from_widget, names=trait)
        if signal.value is not None:
            self.to_widget(signal.value)

    def to_widget(self, value: Any) -> None:
        shown = self.transform(value) if self.transform is not None else value
        self._applying = True  # setting the trait must not write the signal back: no echo
        try:
            setattr(self.widget, self.trait, shown)
        finally:
            self._applying = False

    def from_widget(self, change: dict[str, Any]) -> None:
        if not self._applying:
            self.signal.set(change["new"])

    def stop(self) -> None:
        self.observation.stop()
        if self.transform is None:
            self.widget.unobserve(self.from_widget, names=self.trait)


_bindings: dict[tuple[int, str], _Binding] = {}


def bind_widget(
    widget: Any, topic: str, trait: str = "value", transform: Callable[[Any], Any] | None = None
) -> Signal[Any]:
    """Bind ``widget.trait`` to the synced signal of ``topic``; returns the Signal.

    Moving the widget sets the topic on every peer; a change from any peer
    moves the widget. With ``transform`` the link is one way, like
    ``ipywidgets.dlink``: the widget shows ``transform(value)`` and never writes.
    If the topic already has a value, the widget takes it.
    """
    unbind_widget(widget, trait)
    signal = followed(topic) or sync_signal(topic, None if transform else getattr(widget, trait))
    _bindings[(id(widget), trait)] = _Binding(widget, trait, signal, transform)
    return signal


def unbind_widget(widget: Any, trait: str = "value") -> None:
    """Undo :func:`bind_widget` (the topic stays synced for other bindings and signals)."""
    binding = _bindings.pop((id(widget), trait), None)
    if binding is not None:
        binding.stop()
