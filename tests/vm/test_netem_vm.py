"""Runs ``tests/vm_netem`` inside one QEMU VM (Debian's stock kernel, which has sch_netem) and
reports each guest test as a test here.

One VM per session: it boots, runs the whole guest module with pytest (junit XML into the
shared results directory), powers off, and QEMU is gone before any result is reported.
Without QEMU or the kernel the tests are skipped with the reason, except under CI
(``CI=true``), where that is a failure.
"""

from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vm import qemu

GUEST_DIR = qemu.REPO / "tests" / "vm_netem"
JUNIT = "junit.xml"
TIMEOUT = 280  # the whole guest session; it takes about 70 s on a 2-core CI machine


def guest_tests() -> list[str]:
    """Test functions of the guest module, read without importing it (``file::name``)."""
    names = []
    for path in sorted(GUEST_DIR.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        names += [
            f"{path.stem}::{node.name}"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
    return names


@dataclass
class GuestCase:
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    properties: dict[str, str] = field(default_factory=dict)


@dataclass
class GuestSession:
    result: qemu.Result
    cases: dict[str, list[GuestCase]]  # "file::function" -> one per parametrization


def _parse_junit(xml: bytes) -> dict[str, list[GuestCase]]:
    cases: dict[str, list[GuestCase]] = {}
    for case in ET.fromstring(xml).iter("testcase"):
        module = case.get("classname", "").rpartition(".")[2]
        function = case.get("name", "").partition("[")[0]
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = f"{child.get('message', '')}\n{child.text or ''}"
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        cases.setdefault(f"{module}::{function}", []).append(GuestCase(outcome, message, props))
    return cases


@pytest.fixture(scope="module")
def guest() -> GuestSession:
    try:
        qemu.check_available()
    except qemu.VMUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the netem VM cannot run, and CI must run it: {exc}", pytrace=False)
        pytest.skip(f"netem VM tests need QEMU and Debian's kernel: {exc}")
    command = (
        f"{qemu.python()} -m pytest {GUEST_DIR.relative_to(qemu.REPO)} -q -p no:cacheprovider "
        f"-o junit_family=xunit1 --junitxml=$CHAOS_VM_OUT/{JUNIT}"
    )
    result, files = qemu.run(command, timeout=TIMEOUT, collect=[JUNIT])
    if JUNIT not in files:
        pytest.fail(f"the guest wrote no test results\n{result.describe()}", pytrace=False)
    return GuestSession(result, _parse_junit(files[JUNIT]))


@pytest.mark.parametrize("name", guest_tests())
def test_in_vm(name: str, guest: GuestSession, record_property) -> None:
    cases = guest.cases.get(name)
    if not cases:
        pytest.fail(f"the guest did not run {name}\n{guest.result.describe()}", pytrace=False)
    for case in cases:
        for key, value in case.properties.items():
            record_property(key, value)
            print(f"{name}: {key} = {value}")  # shown with -rA / -s: the measured numbers
    bad = [c for c in cases if c.outcome != "passed"]
    if bad:  # a skip in the guest is a failure too: the VM exists so that nothing skips
        pytest.fail("\n\n".join(f"guest {c.outcome}: {c.message}" for c in bad), pytrace=False)


def test_guest_session_was_clean(guest: GuestSession) -> None:
    """Exit code 0: no collection error, no failed fixture, the guest left nothing behind
    (the guest runs tests/conftest.py's leak check too)."""
    known = set(guest_tests())
    extra = sorted(set(guest.cases) - known)
    assert not extra, f"guest results not matched to a host test: {extra}"
    assert guest.result.rc == 0, guest.result.describe()
    print(f"netem VM session: {guest.result.seconds:.1f} s (boot, tests, power-off)")


def test_artefacts_are_cached() -> None:
    """The second lookup reuses the cached vmlinux and initramfs (no rebuild per session)."""
    try:
        version = qemu.check_available()
    except qemu.VMUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    first = [Path(p).stat().st_mtime_ns for p in qemu.artefacts(version)]
    second = [Path(p).stat().st_mtime_ns for p in qemu.artefacts(version)]
    assert first == second
