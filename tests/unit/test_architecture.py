"""The package's layers: no import loop, and no import from a lower layer to a higher one.

Reads the source (no module is imported): every ``import``/``from`` of a ``chaos`` module,
at the top of a file or inside a function, is an edge; imports under ``if TYPE_CHECKING:``
are for the type checker alone and are not. A module belongs to the layer of the longest
prefix in :data:`LAYERS` that names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chaos"

#: lowest first; a module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("chaos", "chaos.errors", "chaos.endings")),
    # What crosses stages (points, names, run directory, capped logs): formats, no I/O policy.
    ("record", ("chaos.record",)),
    ("kernel", ("chaos.kernel",)),
    # The load contract (stdlib only, shared with the locustfiles) is the scenario's
    # vocabulary for ``load:``.
    (
        "scenario model",
        ("chaos.scenario.model", "chaos.scenario.expression", "chaos.load.contract"),
    ),
    ("lab", ("chaos.lab", "chaos.capabilities")),
    ("load", ("chaos.load",)),
    # The agent's client is a fault type (RemoteFault: a fault applied by asking an agent).
    ("fault types", ("chaos.faults", "chaos.agent.client")),
    ("fault engine", ("chaos.faults.engine",)),
    # The loader checks every fault offline (types, params, timing) as it reads a file.
    ("scenario loader", ("chaos.scenario", "chaos.scenario.loader")),
    ("agent service", ("chaos.agent",)),
    ("sink", ("chaos.sink",)),
    ("collect", ("chaos.collect",)),
    ("judge and report", ("chaos.expect", "chaos.report", "chaos.progress")),
    ("composition", ("chaos.run", "chaos.sweep")),
    ("command line", ("chaos.cli", "chaos.__main__", "chaos.collect.cli")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = prefix != "chaos" and module.startswith(prefix + ".")  # the root: itself
            if (module == prefix or inside) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    """The module a dotted name imports: itself, or its package when it names a member."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


TREES = {module: ast.parse(path.read_text(), str(path)) for module, path in MODULES.items()}


def imports_of(module: str) -> dict[str, int]:
    """The chaos modules ``module`` imports, each with the line of its first import."""
    return imports_of_tree(TREES[module], module)


def imports_of_tree(tree: ast.AST, module: str) -> dict[str, int]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.split(".")[0] != "chaos":
                continue
            resolved = _resolve(target)
            if resolved and resolved != module:
                found.setdefault(resolved, node.lineno)  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_up_a_layer():
    wrong = [
        f"{MODULES[a].relative_to(ROOT)}:{line} imports {b} "
        f"({LAYERS[layer_of(a)][0]} -> {LAYERS[layer_of(b)][0]})"
        for a, edges in GRAPH.items()
        for b, line in edges.items()
        if layer_of(b) > layer_of(a)
    ]
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)


def loops(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_loop():
    assert loops(GRAPH) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b": 1}, "b": {"a": 1}}, [["a", "b"]]),
        ({"a": {"b": 1}, "b": {"c": 1}, "c": {}}, []),
    ],
)
def test_the_loop_finder_finds_loops(graph, expected):
    assert loops(graph) == expected


def test_the_walk_sees_lazy_imports_but_not_type_checking_ones():
    # chaos.scenario.loader imports the fault schedule inside a function
    assert "chaos.faults.engine.schedule" in GRAPH["chaos.scenario.loader"]
    tree = ast.parse("if TYPE_CHECKING:\n    import chaos.run\nimport chaos.errors\n")
    MODULES["chaos.tc_probe"] = Path("probe.py")
    try:
        probe = imports_of_tree(tree, "chaos.tc_probe")
    finally:
        del MODULES["chaos.tc_probe"]
    assert set(probe) == {"chaos.errors"}


#: The only modules that tell a target on an agent from one in the lab: target resolution,
#: and the remote fault (which owns the URL form). Besides them, the scenario's offline
#: checks (no lab, no engine): the model, that a remote run's targets are agent URLs or
#: roles with an agent; ``checks``, which skips agent URLs when it checks lab targets.
DECIDES_REMOTE = {
    "chaos.faults.engine.targets",
    "chaos.agent.client",
    "chaos.scenario.model",
    "chaos.scenario.checks",
}
#: where fault targets travel (the sink's InfluxDB URL has a scheme of its own)
FAULT_ROOMS = ("chaos.faults", "chaos.agent", "chaos.scenario", "chaos.run", "chaos.cli")


def remote_decisions(tree: ast.AST) -> list[int]:
    """Lines that test for a remote target: a URL scheme compared or prefix-tested, an
    ``isinstance(..., RemoteTarget)``, or a call of the tests the remote fault offers."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            name = node.func.id if isinstance(node.func, ast.Name) else name
            args = [c for a in node.args for c in ast.walk(a) if isinstance(c, ast.Constant)]
            schemes = any(str(c.value).startswith(("http:", "https:")) for c in args)
            if (
                (name == "startswith" and schemes)
                or name in ("is_agent_url", "remote_target")
                or (name == "isinstance" and "RemoteTarget" in ast.unparse(node))
            ):
                found.append(node.lineno)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            constants = [c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)]
            if "http" in constants and "https" in constants:
                found.append(node.lineno)
    return found


def test_remote_is_decided_in_one_place():
    wrong = [
        f"{MODULES[m].relative_to(ROOT)}:{line}"
        for m in MODULES
        if m.startswith(FAULT_ROOMS) and m not in DECIDES_REMOTE
        for line in remote_decisions(TREES[m])
    ]
    assert not wrong, "tests for a remote target outside target resolution:\n" + "\n".join(wrong)


def test_the_remote_check_sees_each_form():
    source = (
        "t.startswith(('http://', 'https://'))\nisinstance(t, RemoteTarget)\n"
        "role in ('http', 'https')\nis_agent_url(t)\n"
        "t.startswith('pid:')\nscheme = 'http' if t == 'http' else ''\n"
    )
    assert remote_decisions(ast.parse(source)) == [1, 2, 3, 4]


# --- hand-offs: subscriptions, never patches ------------------------------------------------


_KINDS = (ast.ClassDef, ast.Attribute, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Call)


def nodes_of(tree: ast.AST) -> list[ast.AST]:
    """The nodes the two checks below look at, in one walk of the tree."""
    return [node for node in ast.walk(tree) if isinstance(node, _KINDS)]


def method_names(nodes: list[list[ast.AST]]) -> set[str]:
    """The names that are only ever methods in the package: defined with ``def`` in a class
    body, never a property, a class-level field or an attribute set on ``self``."""
    methods, data = set(), set()
    for module_nodes in nodes:
        for node in module_nodes:
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        decorators = {ast.unparse(d) for d in item.decorator_list}
                        is_property = any("property" in d or ".setter" in d for d in decorators)
                        (data if is_property else methods).add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        data.add(item.target.id)
                    elif isinstance(item, ast.Assign):
                        data |= {t.id for t in item.targets if isinstance(t, ast.Name)}
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                data.add(node.attr)
    return {name for name in methods - data if not name.startswith("__")}


def method_patches(nodes: list[ast.AST], methods: set[str]) -> list[tuple[int, str]]:
    """Assignments (and ``setattr``) to a method name on an object other than ``self``:
    one stage patching another's method, a hand-off the imports do not show."""
    found = []
    for node in nodes:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr in methods
                and not (isinstance(target.value, ast.Name) and target.value.id in ("self", "cls"))
            ):
                found.append((node.lineno, ast.unparse(target)))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in methods
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_patches_another_objects_method():
    """Stages hand data on by subscribing (e.g. to the sampler's ``SampleHook``), so the
    order of two ``with`` blocks never decides who sees what."""
    nodes = {module: nodes_of(tree) for module, tree in TREES.items()}
    methods = method_names(list(nodes.values()))
    assert {"write", "publish", "subscribe"} <= methods  # (it sees the methods)
    wrong = [
        f"{MODULES[module].relative_to(ROOT)}:{line}: {text}"
        for module, module_nodes in nodes.items()
        for line, text in method_patches(module_nodes, methods)
    ]
    assert not wrong, "assignments to another object's method:\n" + "\n".join(wrong)


def test_the_patch_finder_finds_patches():
    tree = ast.parse("sink.write = tap\nself.write = tap\nsetattr(sink, 'write', tap)\n")
    found = method_patches(nodes_of(tree), {"write"})
    assert found == [(1, "sink.write"), (3, "setattr(sink, 'write', tap)")]
