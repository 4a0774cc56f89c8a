"""Load scenario files: YAML → :class:`Scenario`, with every problem reported at once.

Each problem carries its field path (``lab.proxy.kind``) and the line in the file, found by
walking PyYAML's node tree (which keeps source positions) along pydantic's error location.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from chaos.errors import ChaosError, Problem, ScenarioError, UsageError
from chaos.scenario import checks
from chaos.scenario.model import FaultSpec, LoadTls, Scenario

BUILTIN_PACKAGE = "chaos.scenario.builtin"


@dataclass(frozen=True)
class ScenarioSource:
    """Where a scenario came from: a builtin name or a file path, and its text."""

    label: str
    text: str
    builtin: bool


# --- YAML with positions -----------------------------------------------------------------


#: a scenario file larger than this is refused (a real one is a few KiB); the environment
#: variable CHAOS_SCENARIO_MAX_BYTES raises it
MAX_BYTES = 1 << 20
MAX_BYTES_ENV = "CHAOS_SCENARIO_MAX_BYTES"
#: YAML nodes a file may stand for once its aliases are expanded (a scenario has hundreds;
#: a "billion laughs" file billions): above it the file is refused before it is built
MAX_EXPANDED_NODES = 100_000


def max_bytes() -> int:
    value = os.environ.get(MAX_BYTES_ENV, "")
    return int(value) if value.isdigit() else MAX_BYTES


def read_scenario_file(path: Path) -> str:
    """The file's text: at most :func:`max_bytes` bytes of UTF-8, else a ScenarioError."""
    label, limit = str(path), max_bytes()
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ScenarioError(label, [Problem("", None, f"cannot read it: {exc.strerror}")]) from None
    if len(data) > limit:
        message = (
            f"the file is larger than {limit:,} bytes, more than any scenario needs "
            f"(set {MAX_BYTES_ENV} to allow more)"
        )
        raise ScenarioError(label, [Problem("", None, message)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        message = (
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            "(save the file as UTF-8)"
        )
        raise ScenarioError(label, [Problem("", line, message)]) from None


#: libyaml's parser where PyYAML was built with it: ~10x faster, and it caps nesting depth
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, label: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (with positions) and the data built from it, parsed once; a file whose
    aliases expand past the budget is refused between the two."""
    loader = _Loader(text)
    try:
        root = _compose(loader, label)
        _check_expansion(root, label)
        try:
            return root, loader.construct_document(root) if root is not None else None
        except yaml.YAMLError as exc:
            raise ScenarioError(label, [Problem("", None, f"YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _compose(loader: Any, label: str) -> yaml.Node | None:
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise ScenarioError(label, [Problem("", line, f"YAML syntax: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(label, [Problem("", None, f"YAML: {exc}")]) from None
    except RecursionError:
        raise ScenarioError(label, [Problem("", None, "YAML nested too deeply")]) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node | None, label: str) -> None:
    """Refuse a file whose aliases expand to more than MAX_EXPANDED_NODES nodes. An alias is
    the same node object as its anchor, so sizes are counted once per node (memo)."""
    if root is None:
        return
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a node that contains itself counts once
            total = 1 + sum(size(child) for child in _children(node))
            sizes[id(node)] = min(total, MAX_EXPANDED_NODES + 1)
        return sizes[id(node)]

    if size(root) <= MAX_EXPANDED_NODES:
        return
    node = root  # the line: the smallest node that alone crosses the limit
    while True:
        big = [c for c in _children(node) if sizes[id(c)] > MAX_EXPANDED_NODES]
        if not big:
            break
        node = big[0]
    message = (
        f"aliases expand to more than {MAX_EXPANDED_NODES:,} YAML nodes (an alias bomb?); "
        "write the values out, or use fewer nested aliases"
    )
    raise ScenarioError(label, [Problem("", node.start_mark.line + 1, message)])


def _duplicate_keys(root: yaml.Node | None) -> list[Problem]:
    """PyYAML keeps the last of two equal keys silently; a scenario should not. Each node is
    visited once, however many aliases point at it."""
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node | None, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                if key in keys:
                    problems.append(Problem(child, key_node.start_mark.line + 1, "duplicate key"))
                keys.add(key)
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """Follow ``loc`` into the node tree; returns the deepest node reached and whether the
    last step landed on a mapping *key* (for unknown keys, the key's own line is best)."""
    node, on_key = root, False
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                continue  # pydantic-internal location parts (union tags and the like)
            key_node, value_node = match[0]
            node, on_key = value_node, part == loc[-1]
            if on_key:
                return key_node, True
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
    return node, on_key


# --- pydantic errors → problems ----------------------------------------------------------


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last element of ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = Scenario
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            field = next(
                (f for f in model.model_fields.values() if f.alias == part),
                None,
            )
        model = _find_model(field.annotation) if field else None
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    """The first model class inside an annotation (``X | None``, ``list[X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found:
            return found
    return None


def _format_path(loc: tuple[Any, ...]) -> str:
    """``("lab", "proxy", "kind")`` → ``lab.proxy.kind``; list indexes as ``[i]``.

    pydantic adds internal parts for validator wrappers (``function-after[...]``); they are
    not field names, so they are dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" not in str(part):
            out += f".{part}" if out else str(part)
    return out


def _message(error: dict[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        message = f"unknown key {loc[-1]!r}"
        if model is not None:
            allowed = [f.alias or name for name, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            else:
                message += f"; allowed here: {', '.join(sorted(allowed))}"
        return message
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _problems(exc: ValidationError, root: yaml.Node | None) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        node, _ = _node_at(root, loc)
        line = node.start_mark.line + 1 if node is not None else None
        path = _format_path(loc)
        # Keep the given value in the message when it helps (enums, wrong types).
        message = _message(error)
        if error["type"] in ("literal_error", "enum") and "input" in error:
            message = f"{message}, got {error['input']!r}"
        problems.append(Problem(path, line, message))
    return problems


# --- public API --------------------------------------------------------------------------


#: ``chaos validate``'s host checks (see :mod:`chaos.scenario.checks`): not run, problems,
#: or warnings (validating for another host)
HostChecks = Literal["off", "error", "warn"]


def parse(
    text: str, label: str, host: HostChecks = "off", warnings: list[Problem] | None = None
) -> Scenario:
    """Validate scenario text; raises ScenarioError carrying every problem found. ``host``:
    also check this host's kernel features and sysctls, as problems or as ``warnings``."""
    root, data = _load_yaml(text, label)
    problems = _duplicate_keys(root)
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        raise ScenarioError(label, [Problem("", line, "a scenario must be a YAML mapping")])
    # every fault is checked on its own, so a model error elsewhere hides none of them
    specs = _fault_specs(data.get("faults"))
    problems += [
        Problem(path, _line_at(root, ("faults", i)), message)
        for i, path, message in _fault_problems(specs or [], "faults")
    ]
    problems += _located(root, checks.plan_problems(data))
    if host != "off":
        on_host = _located(root, checks.host_problems(data))
        if host == "error":
            problems += on_host
        elif warnings is not None:
            warnings += on_host
    try:
        # built from the checked specs, so the params they parsed travel with the scenario
        checked = specs is not None and None not in specs
        scenario = Scenario.model_validate({**data, "faults": specs} if checked else data)
    except ValidationError as exc:
        problems += _problems(exc, root)
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ScenarioError(label, _unique(problems)) from None
    base = {message for _, message in checks.plan_problems(data)}
    for key, variants in (("variants", scenario.variants), ("controls", scenario.controls)):
        for index, variant in enumerate(variants):
            where, line = f"{key}[{index}].patch", _line_at(root, (key, index))
            try:
                varied = with_variant(scenario, variant.name)
            except ValidationError as exc:
                problems += [
                    Problem(f"{where} -> {_format_path(err['loc'])}", line,
                            _message(err))  # type: ignore[arg-type]
                    for err in exc.errors()
                ]
                continue
            if "faults" in variant.patch:
                problems += [
                    Problem(f"{where} -> {path}", line, message)
                    for _, path, message in _fault_problems(varied.faults, "faults")
                ]
            problems += [
                Problem(f"{where} -> {_format_path(loc)}", line, message)
                for loc, message in checks.plan_problems(
                    varied.model_dump(mode="json", by_alias=True)
                )
                if message not in base
            ]
    names = [v.name for v in (*scenario.variants, *scenario.controls)]
    if len(set(names)) != len(names):
        problems.append(
            Problem("variants", _line_at(root, ("variants", 0)), "variant and control names repeat")
        )
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ScenarioError(label, _unique(problems))
    return scenario


def _located(root: yaml.Node | None, found: list[checks.Found]) -> list[Problem]:
    return [Problem(_format_path(loc), _line_at(root, loc), message) for loc, message in found]


def _unique(problems: list[Problem]) -> list[Problem]:
    """Each problem once; one the model found across fields (at ``<root>``) is dropped when
    a check located the same words at their field."""
    located = {p.message for p in problems if p.path}
    return list(dict.fromkeys(p for p in problems if p.path or p.message not in located))


def _fault_specs(faults: object) -> list[FaultSpec | None] | None:
    """The file's fault list as written, each entry a FaultSpec (None: one the model
    rejects; pydantic reports its shape); None when ``faults`` is not a list."""
    if not isinstance(faults, list):
        return None
    specs: list[FaultSpec | None] = []
    for item in faults:
        try:
            specs.append(FaultSpec.model_validate(item))
        except ValidationError:
            specs.append(None)
    return specs


def _line_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    node, _ = _node_at(root, loc)
    return node.start_mark.line + 1 if node is not None else None


def _variant_line(root: yaml.Node | None, index: int) -> int | None:
    return _line_at(root, ("variants", index))


def _fault_problems(
    faults: Sequence[FaultSpec | None], prefix: str
) -> list[tuple[int, str, str]]:
    """(index, path, message) for each fault whose type, params or timing is wrong (None:
    an entry the model rejects, reported by it). A spec that passes keeps its parsed params
    (:func:`~chaos.faults.engine.schedule.check_offline`)."""
    from chaos.errors import FaultError  # the fault package imports this one's model
    from chaos.faults.engine.schedule import check_offline

    out = []
    for index, spec in enumerate(faults):
        if spec is None:
            continue
        try:
            check_offline(spec)
        except FaultError as exc:
            hint = f" ({exc.hint})" if exc.hint and "unknown fault type" in exc.message else ""
            out.append((index, f"{prefix}[{index}]", exc.message + hint))
    return out


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_variant(scenario: Scenario, name: str) -> Scenario:
    """The scenario with variant (or control) ``name``'s patch merged in (raises
    ValidationError)."""
    variant = next((v for v in (*scenario.variants, *scenario.controls) if v.name == name), None)
    if variant is None:
        variants = ", ".join(v.name for v in scenario.variants) or "none"
        controls = ", ".join(v.name for v in scenario.controls) or "none"
        raise ChaosError(
            f"scenario {scenario.name} has no variant or control {name!r}",
            f"its variants: {variants}; its controls: {controls}",
        )
    # only what the file set: a key the file left out stays unset (the model checks some keys
    # only when they are set, e.g. what an external proxy would ignore)
    given = scenario.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data = _merge(given, variant.patch)
    data.update(variants=[], controls=[], variant=name)
    if "faults" in data and "faults" not in variant.patch:
        data["faults"] = scenario.faults  # the same specs, with the params they parsed
    return Scenario.model_validate(data)


def builtin_names() -> list[str]:
    folder = resources.files(BUILTIN_PACKAGE)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def locate(name_or_path: str) -> ScenarioSource:
    """A path to a file, or the name of a builtin scenario."""
    path = Path(name_or_path)
    if path.is_file():
        return ScenarioSource(str(path), read_scenario_file(path), builtin=False)
    if name_or_path in builtin_names():
        entry = resources.files(BUILTIN_PACKAGE).joinpath(f"{name_or_path}.yaml")
        return ScenarioSource(name_or_path, entry.read_text(), builtin=True)
    names = ", ".join(builtin_names())
    raise UsageError(
        f"no scenario file or builtin scenario named {name_or_path!r}",
        f"give a path to a YAML file, or one of the builtins: {names} (`chaos scenarios`)",
    )


def load(
    name_or_path: str, host: HostChecks = "off", warnings: list[Problem] | None = None
) -> Scenario:
    """A scenario file or builtin, validated (``host``, ``warnings``: see :func:`parse`)."""
    source = locate(name_or_path)
    scenario = parse(source.text, source.label, host, warnings)
    config = scenario.lab.proxy.config
    if config and not source.builtin and not Path(config).is_absolute():
        # lab.proxy.config is relative to the scenario file, not to where chaos runs
        scenario = with_proxy_config(scenario, str(Path(source.label).parent / config))
    tls = scenario.load.tls
    if isinstance(tls, LoadTls) and tls.ca and not Path(tls.ca).is_absolute():
        ca = str(Path(source.label).parent / tls.ca)  # like lab.proxy.config
        load = scenario.load.model_copy(update={"tls": tls.model_copy(update={"ca": ca})})
        scenario = scenario.model_copy(update={"load": load})
    return scenario


#: how `--proxy-config FILE` without `--proxy-kind` tells the proxy from the file
_KIND_SIGNS = (
    ("caddy", re.compile(r"caddy", re.I), re.compile(r"\breverse_proxy\b")),
    ("haproxy", re.compile(r"haproxy", re.I), re.compile(r"^\s*(frontend|backend|listen)\s", re.M)),
    ("nginx", re.compile(r"nginx", re.I), re.compile(r"^\s*(http|stream|events)\s*\{", re.M)),
)


def proxy_kind_of(path: Path, text: str) -> str | None:
    """haproxy, nginx or caddy from a configuration file's name, else from its content."""
    for kind, name_sign, _ in _KIND_SIGNS:
        if name_sign.search(path.name):
            return kind
    found = [kind for kind, _, text_sign in _KIND_SIGNS if text_sign.search(text)]
    return found[0] if len(found) == 1 else None


def with_proxy_config(scenario: Scenario, path: str, kind: str | None = None) -> Scenario:
    """``scenario`` whose lab proxy runs the user's configuration file ``path``
    (``--proxy-config``); ``kind`` (``--proxy-kind``) defaults to the one the file looks
    like. The knobs the file replaces go back to their defaults."""
    from chaos.scenario.model import GENERATED_ONLY, ProxySpec

    file = Path(path)
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChaosError(
            f"--proxy-config {path}: cannot read it ({exc})", "give your proxy's config file"
        ) from None
    kind = kind or proxy_kind_of(file, text)
    if kind is None:
        raise ChaosError(
            f"--proxy-config {path}: cannot tell whether it is for haproxy, nginx or caddy",
            "say which with --proxy-kind haproxy|nginx|caddy",
        )
    proxy = scenario.lab.proxy
    kept = proxy.model_dump(exclude={*GENERATED_ONLY, "config", "kind"}, exclude_unset=True)
    try:
        spec = ProxySpec.model_validate(
            {**kept, "kind": kind, "config": str(file.absolute())}
        )
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ChaosError(
            f"--proxy-config {path} with this scenario's lab.proxy: {problems}",
            "use a scenario whose lab.proxy fits your proxy (kind, mode)",
        ) from None
    lab = scenario.lab.model_copy(update={"proxy": spec})
    return scenario.model_copy(update={"lab": lab})


def headline(description: str) -> str:
    """A description's first clause: up to the first colon, semicolon or full stop."""
    text = " ".join(description.split())
    return re.split(r"[:;]\s|\.\s|\.$", text, maxsplit=1)[0] if text else ""


@dataclass(frozen=True)
class BuiltinSummary:
    """One line of `chaos scenarios`."""

    name: str
    headline: str
    variants: tuple[str, ...]
    controls: tuple[str, ...]


def describe_builtins() -> list[BuiltinSummary]:
    """Name, one-line description, variant and control names of each builtin scenario."""
    out = []
    for name in builtin_names():
        scenario = load(name)
        out.append(
            BuiltinSummary(
                name,
                headline(scenario.description),
                tuple(v.name for v in scenario.variants),
                tuple(c.name for c in scenario.controls),
            )
        )
    return out


def json_schema() -> str:
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "chaos scenario"
    return json.dumps(schema, indent=2)


def dump_resolved(scenario: Scenario) -> str:
    """The scenario with every default filled in, as YAML (written into the run directory)."""
    return yaml.safe_dump(
        scenario.model_dump(mode="json", by_alias=True), sort_keys=False, default_flow_style=False
    )
