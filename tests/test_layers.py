"""The package's layers, read from its imports (``TYPE_CHECKING`` ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import triorelay

PACKAGE = Path(triorelay.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["triorelay", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every triorelay module and the triorelay modules it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t.startswith("triorelay")}
    known = set(graph)
    return {name: {t for t in targets if t in known} - {name} for name, targets in graph.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_cycles_between_modules() -> None:
    """No module imports, directly or not, one that imports it back (TYPE_CHECKING included),
    except a package's ``__init__`` re-exporting its own modules."""
    graph = _imports()
    for start in graph:
        stack, seen = [start], set()
        while stack:
            module = stack.pop()
            for target in graph[module]:
                if target == start and not start.startswith(module):
                    chain = f"{start} -> ... -> {module} -> {start}"
                    raise AssertionError(f"import cycle: {chain}")
                if target not in seen and not module.startswith(target):
                    seen.add(target)
                    stack.append(target)


def test_the_hub_and_the_brokers_know_nothing_of_routes_or_the_app() -> None:
    """hub/ and brokers/ import no routes, app, relay, server or lifecycle; brokers no hub."""
    above = {"routes", "app", "relay", "server", "cli", "lifecycle"}
    for module, targets in _imports().items():
        layer = _layer(module)
        if layer not in ("hub", "brokers"):
            continue
        bad = {
            t for t in targets if _layer(t) in above or (layer == "brokers" and _layer(t) == "hub")
        }
        assert not bad, f"{module} imports {sorted(bad)}"


def test_envelopes_and_settings_are_leaves() -> None:
    """The pure modules everything builds on import nothing of triorelay but errors (and
    settings the pure rules it validates against)."""
    graph = _imports()
    pure = {"triorelay.auth.grants", "triorelay.auth.origins"}
    allowed = {
        "triorelay.envelopes": set(),
        "triorelay.errors": set(),
        "triorelay.auth.grants": set(),
        "triorelay.auth.origins": set(),
        "triorelay.compat.trio_websocket": set(),
        "triorelay.settings": {"triorelay.errors", "triorelay.auth"} | pure,
    }
    for module, may_import in allowed.items():
        assert graph[module] <= may_import, f"{module} imports {graph[module] - may_import}"


def test_the_client_knows_nothing_of_the_server() -> None:
    """triorelay.client imports only itself and the pure shared modules (the framing, the
    envelopes, the errors, the trio-websocket workaround it shares with the proxy): a client
    install runs none of the relay."""
    shared = {"triorelay.framing", "triorelay.envelopes", "triorelay.errors"}
    shared.add("triorelay.compat.trio_websocket")
    for module, targets in _imports().items():
        if _layer(module) != "client":
            continue
        bad = {t for t in targets if _layer(t) != "client" and t not in shared}
        assert not bad, f"{module} imports {sorted(bad)}"
