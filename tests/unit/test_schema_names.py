"""Every measurement and field a reader names is one the collectors or the load series write.

The readers are the report (``chaos/report/``, with ``chaos compare``), expectations
(``chaos/expect.py`` and every built-in scenario's ``expect:`` metrics), the sweep, live
progress and the Grafana dashboard; what is written is :mod:`chaos.record.schema`. Names are
read from the readers' source (no module runs), where the code names a measurement or a field:

* ``run.series("m", "f")``, ``run.measurement("m")``, ``by_measurement.get("m")``;
* ``point.measurement == "m"`` (or ``in (...)``), ``m == "m"`` for a variable called ``m``
  or ``measurement``;
* ``point.fields.get("f")``, ``point.fields["f"]``, ``_num(p, "f")`` (the sweep's reader);
* constants whose name says ``MEASUREMENTS`` or ``FIELDS``: tuples of names.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from chaos.record import schema
from tests.deploy_checks import dashboard_queries, query_refs

ROOT = Path(__file__).resolve().parents[2]
READERS = [
    *sorted((ROOT / "chaos" / "report").glob("*.py")),
    ROOT / "chaos" / "expect.py",
    ROOT / "chaos" / "sweep.py",
    ROOT / "chaos" / "progress.py",
]
_MEASUREMENT_VARS = {"m", "measurement"}


@dataclass
class Names:
    measurements: dict[str, str] = field(default_factory=dict)  # name -> where
    pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _texts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [t for t in map(_text, node.elts) if t is not None]
    if isinstance(node, ast.Dict):
        return [t for t in map(_text, node.keys) if t is not None]
    text = _text(node)
    return [text] if text is not None else []


def _is_fields(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "fields"


def _is_measurement(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "measurement") or (
        isinstance(node, ast.Name) and node.id in _MEASUREMENT_VARS
    )


def names_in_source(path: Path, names: Names | None = None) -> Names:
    names = names or Names()
    tree = ast.parse(path.read_text(), str(path))
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(tree):
        where = f"{label}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func, args = node.func, node.args
            attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first, second = (_text(args[0]) if args else None), (
                _text(args[1]) if len(args) > 1 else None
            )
            if attr == "series" and first:
                names.measurements[first] = where
                if second:
                    names.pairs[(first, second)] = where
            elif attr == "measurement" and first:
                names.measurements[first] = where
            elif attr == "get" and isinstance(func, ast.Attribute) and first:
                owner = func.value
                if _is_fields(owner):
                    names.fields[first] = where
                elif isinstance(owner, ast.Name) and "measurement" in owner.id:
                    names.measurements[first] = where
            elif attr == "_num" and second and getattr(args[0], "id", "") in ("p", "point"):
                names.fields[second] = where
        elif isinstance(node, ast.Subscript) and _is_fields(node.value):
            text = _text(node.slice)
            if text:
                names.fields[text] = where
        elif isinstance(node, ast.Compare) and _is_measurement(node.left):
            for comparator in node.comparators:
                for text in _texts(comparator):
                    names.measurements[text] = where
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            assigned = " ".join(t.id for t in targets if isinstance(t, ast.Name))
            if node.value is not None and "MEASUREMENTS" in assigned:
                for text in _texts(node.value):
                    names.measurements[text] = where
    return names


def reader_names() -> Names:
    names = Names()
    for path in READERS:
        names_in_source(path, names)
    for path in sorted((ROOT / "chaos" / "scenario" / "builtin").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        expectations = list(doc.get("expect") or [])
        for variant in doc.get("variants") or []:
            expectations += (variant.get("patch") or {}).get("expect") or []
        for exp in expectations:
            measurement, _, fld = str(exp["metric"]).partition(".")
            names.pairs[(measurement, fld)] = f"{path.relative_to(ROOT)} ({exp['metric']})"
    for query in dashboard_queries():
        measurements, fields = query_refs(query)
        for measurement in measurements:
            for fld in fields:
                names.pairs[(measurement, fld)] = "deploy/grafana dashboard"
    for measurement, _ in names.pairs:
        names.measurements.setdefault(measurement, names.pairs[(measurement, _)])
    return names


def unknown_names(names: Names) -> list[str]:
    written = schema.MEASUREMENTS
    problems = [
        f"{where}: measurement {m!r} is written by nothing"
        for m, where in names.measurements.items()
        if m not in written
    ]
    problems += [
        f"{where}: {m}.{f} is not a field of {m}"
        for (m, f), where in names.pairs.items()
        if m in written and not written[m].has_field(f)
    ]
    problems += [
        f"{where}: field {f!r} is a field of no measurement"
        for f, where in names.fields.items()
        if not any(m.has_field(f) for m in written.values())
    ]
    return problems


def test_every_name_a_reader_uses_is_written():
    names = reader_names()
    # the walk finds what the readers name (so a change in how they name it is noticed)
    assert {schema.TCP_STATES, schema.PORT_BUDGET_SUMMARY, schema.TCP_ZOMBIES} <= set(
        names.measurements
    )
    assert len(names.pairs) > 20 and len(names.fields) > 5
    assert unknown_names(names) == []


def test_the_check_rejects_a_name_nothing_writes(tmp_path):
    reader = tmp_path / "reader.py"
    reader.write_text(
        "def f(run, p, m):\n"
        "    run.series('tcp_states', 'time_wiat')\n"
        "    run.measurement('tcp_stats')\n"
        "    p.fields.get('max_utilisaton')\n"
        "    return m == 'locust_failure'\n"
    )
    found = names_in_source(reader)
    assert set(found.measurements) == {"tcp_states", "tcp_stats", "locust_failure"}
    assert found.pairs == {("tcp_states", "time_wiat"): found.pairs[("tcp_states", "time_wiat")]}
    assert set(found.fields) == {"max_utilisaton"}
    assert len(unknown_names(found)) == 4


@pytest.mark.parametrize(
    ("measurement", "name", "written"),
    [
        (schema.TCP_TEARDOWN, "fin_wait1_oldest_s", True),
        (schema.CONNTRACK, "insert_failed", True),
        (schema.CONNTRACK, "tcp_close_wait", True),
        (schema.CONNTRACK, "max_utilisation", False),
        (schema.LOAD, "connect_p99_us", True),
        (schema.LOAD, "connect_p97_us", False),
        (schema.HOST_CPU, "steal", True),
    ],
)
def test_fields_named_after_outside_lists(measurement, name, written):
    assert schema.measurement(measurement).has_field(name) is written


def test_the_load_series_writes_what_the_schema_says():
    from chaos.collect.load_series import second_samples
    from chaos.load.series import PHASES, Second

    second = Second(t=1, users=3, started=5, completed=4, failed=1, failures={"ETIMEDOUT": 1})
    for phase in PHASES:
        second.histogram(phase).record_value(1500)
    points = second_samples(second, {"role": "client"})
    assert {p.measurement for p in points} == {schema.LOAD, schema.LOAD_FAILURES}
    for point in points:
        written = schema.measurement(point.measurement)
        assert [f for f in point.fields if not written.has_field(f)] == []
        assert set(point.tags) <= written.tags


# --- the writers -----------------------------------------------------------------------------

WRITERS = sorted((ROOT / "chaos" / "collect").glob("*.py"))


def written_in_source(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every ``Sample(MEASUREMENT, tags, fields, ...)`` of a collector module: (line, the
    measurement named, the keys of ``fields`` its function spells out: a literal dict, or a
    variable given literal keys). A measurement is
    named by a schema constant (``schema.X``, or a name bound to one); a string literal comes
    back as ``"literal:<text>"``."""
    import importlib

    module = None
    if path.is_relative_to(ROOT):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    found: dict[int, tuple[int, str, list[str]]] = {}
    tree = ast.parse(path.read_text(), str(path))
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))]:
        keys = _literal_keys(scope)
        for line, name, fields in _samples_in(scope, module, keys):
            if line not in found or fields:  # the innermost scope knows the fields
                found[line] = (line, name, fields)
    return sorted(found.values())


def _literal_keys(scope: ast.AST) -> dict[str, list[str]]:
    """The keys a scope spells out for each dict variable: ``v = {"k": ...}`` and
    ``v["k"] = ...``."""
    keys: dict[str, list[str]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value, ast.Dict):
                    keys.setdefault(target.id, []).extend(_texts(node.value))
                elif (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and _text(target.slice) is not None
                ):
                    keys.setdefault(target.value.id, []).append(_text(target.slice))  # type: ignore[arg-type]
    return keys


def _samples_in(
    scope: ast.AST, module: object, keys: dict[str, list[str]]
) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(scope):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Sample"):
            continue
        first = node.args[0] if node.args else None
        if _text(first) is not None:
            name = f"literal:{_text(first)}"
        elif isinstance(first, ast.Attribute) and getattr(first.value, "id", "") == "schema":
            name = getattr(schema, first.attr)
        elif isinstance(first, ast.Name) and isinstance(getattr(module, first.id, None), str):
            name = getattr(module, first.id)
        else:
            continue  # not a name of its own (a sample re-tagged, a lab counter's name)
        given = node.args[2] if len(node.args) > 2 else None
        if isinstance(given, ast.Dict):
            fields = _texts(given)
        elif isinstance(given, ast.Name):
            fields = keys.get(given.id, [])
        else:
            fields = []
        found.append((node.lineno, name, fields))
    return found


def test_collectors_name_what_they_write_by_the_schema():
    """The collectors write measurements by the schema's constants, never a literal, and
    every field they spell out is one of that measurement's."""
    problems, seen = [], set()
    for path in WRITERS:
        for line, name, fields in written_in_source(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if name.startswith("literal:"):
                problems.append(f"{where}: {name[8:]!r} is a literal, not a schema constant")
                continue
            seen.add(name)
            if name not in schema.MEASUREMENTS:
                problems.append(f"{where}: measurement {name!r} is not in the schema")
                continue
            wrong = [f for f in fields if not schema.measurement(name).has_field(f)]
            problems += [f"{where}: {name}.{f} is not in the schema" for f in wrong]
    assert problems == []
    # the walk sees the writers (so a change in how they write is noticed)
    assert {schema.TCP_STATES, schema.TCP_ZOMBIES_PEER, schema.COLLECTOR_COST} <= seen


def test_the_writer_check_sees_a_literal_and_a_wrong_field(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from chaos.record import schema\n"
        "a = Sample('tcp_stats', {}, {}, 0)\n"
        "b = Sample(schema.TCP_STATES, {}, {'time_wiat': 1}, 0)\n"
        "def sample():\n"
        "    fields = {'total': 1}\n"
        "    fields['clsoe_wait'] = 2\n"
        "    return Sample(schema.TCP_STATES, {}, fields, 0)\n"
    )
    found = written_in_source(probe)
    assert found == [
        (2, "literal:tcp_stats", []),
        (3, "tcp_states", ["time_wiat"]),
        (7, "tcp_states", ["total", "clsoe_wait"]),
    ]
    assert not schema.measurement("tcp_states").has_field("time_wiat")
