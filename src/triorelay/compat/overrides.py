"""A method overridden on one object, and put back, with no reference cycle.

The compat modules replace a method of one Hypercorn or wsproto object (its instance
attribute) for the life of a connection. A bound method kept on the object it is bound to is a
reference cycle (the object, its ``__dict__``, the method, the object), so a closed connection
would wait for a full collection of the cyclic collector, which the relay makes rare
(``lifecycle/collector.py``). :func:`weak_original` is what an override calls instead of the
method it replaced; :func:`put_back` undoes an override.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


def is_own_method(method: Any, obj: Any) -> bool:
    """Whether ``method`` is ``obj``'s own method (its class's, bound to it): one that, kept
    on ``obj`` as an override, would be a reference cycle."""
    return getattr(method, "__self__", None) is obj and getattr(
        type(obj), getattr(method, "__name__", ""), None
    ) is getattr(method, "__func__", None)


def weak_original(obj: Any, name: str, *, once: bool = False) -> Callable[..., Any]:
    """``obj.name`` as it is now, for an override kept on ``obj`` to call.

    ``obj``'s own method is called through a weak reference to ``obj``; with ``once``, the
    first call also deletes the override, so ``obj`` has its own method again and the
    override goes. An override another layer installed first is returned as it is (and kept).
    """
    method = getattr(obj, name)
    if not is_own_method(method, obj):
        return method  # type: ignore[no-any-return]
    function, owner = method.__func__, weakref.ref(obj)

    def call(*args: Any, **kwargs: Any) -> Any:
        target = owner()
        assert target is not None  # called as its method: it is alive
        if once:
            vars(target).pop(name, None)
        return function(target, *args, **kwargs)

    return call


def put_back(obj: Any, name: str, original: Any) -> None:
    """Restore ``obj.name`` to ``original``: where that is ``obj``'s own method, by deleting
    the override rather than keeping the bound method on ``obj``."""
    if is_own_method(original, obj):
        delattr(obj, name)
    else:
        setattr(obj, name, original)
