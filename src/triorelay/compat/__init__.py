"""Workarounds for the exact versions of our dependencies, each isolated in one module.

(Hypercorn's are a package, :mod:`triorelay.compat.hypercorn`, one module per job.)

Every function here reaches into a dependency's internals or works around a reported upstream
behaviour. Each names the upstream issue or code it depends on, the dependency is pinned exactly
in ``pyproject.toml``, and ``tests/compat/`` fails if the upstream behaviour changes.
"""
