"""Fault types for real: the contract every type passes, real effects on traffic and
processes, target resolution, the guard, and the `chaos faults` / `revert-all` commands."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_contract import Case, run_contract
from fault_lab import (
    ORIGIN_IP,
    ORIGIN_PORT,
    MiniLab,
    http_get,
    mini_lab,
    nft_ruleset,
    send_bytes,
    sink_server,
    spawn_sleeper,
    tcp_counters,
)

from chaos import capabilities
from chaos.errors import FaultError
from chaos.faults import nft as nft_faults
from chaos.faults.base import Handle, Target
from chaos.faults.engine.guard import FaultGuard
from chaos.faults.engine.ledger import Ledger
from chaos.faults.engine.targets import resolve, resolve_local
from chaos.faults.registry import fault_type, fault_types
from chaos.kernel import netns
from chaos.kernel.processes import state_of
from chaos.kernel.proctree import children
from chaos.record.journal import Journal, read_journal

SYSCTLS = {
    "net.ipv4.tcp_fin_timeout": 7,
    "net.ipv4.tcp_rmem": [4096, 8192, 16384],
    "net.netfilter.nf_conntrack_tcp_timeout_established": 33,
}


@pytest.fixture
def ledger_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger"
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(path))  # the CLI and default Ledger() too
    return path


@pytest.fixture
def lab(lab_name: str, tmp_path: Path) -> Iterator[MiniLab]:
    with mini_lab(lab_name, tmp_path) as made:
        yield made


@pytest.fixture
def sleepers() -> Iterator[Callable[[str], subprocess.Popen]]:
    """Dummy processes in a namespace; all killed and reaped at the end of the test."""
    made: list[subprocess.Popen] = []

    def spawn(namespace: str) -> subprocess.Popen:
        made.append(spawn_sleeper(namespace))
        return made[-1]

    yield spawn
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _process_view(pids: list[int]) -> tuple[tuple[int, str], ...]:
    return tuple(
        (p, "stopped" if state_of(p) == "T" else str(state_of(p) is not None)) for p in pids
    )


def make_case(kind: str, lab: MiniLab, sleepers: Callable[[str], subprocess.Popen]) -> Case:
    def origin() -> Target:
        return resolve("origin", lab.state)

    def table_present(handle: Handle) -> bool:
        return f"table inet {handle.data['table']}" in nft_ruleset(handle.data["netns"])

    def empty_table(handle: Handle) -> None:
        # An apply cut short: the table exists, its chains never came.
        nft_faults.run_nft(handle.data["netns"], f"add table inet {handle.data['table']}\n")

    if kind == "nft-filter":
        return Case(
            kind,
            {"tcp_flags": "syn", "dport": 8080, "direction": ["input"]},
            origin,
            lambda t: nft_ruleset(t.netns or ""),
            lambda h: table_present(h) and "tcp dport 8080" in nft_ruleset(h.data["netns"]),
            empty_table,
        )
    if kind == "nft-loss":
        return Case(
            kind,
            {"probability": 30, "direction": ["input", "output"]},
            origin,
            lambda t: nft_ruleset(t.netns or ""),
            lambda h: (
                table_present(h)
                and "numgen random mod 10000 < 3000" in nft_ruleset(h.data["netns"])
            ),
            empty_table,
        )
    if kind == "nft-mangle":
        return Case(
            kind,
            {"field": "seq", "xor": 1, "dport": 8080, "direction": "input"},
            origin,
            lambda t: nft_ruleset(t.netns or ""),
            lambda h: (
                table_present(h)
                and "tcp sequence set tcp sequence ^ 1" in nft_ruleset(h.data["netns"])
            ),
            empty_table,
        )
    if kind == "stop":

        def stop_first(handle: Handle) -> None:
            os.kill(handle.data["processes"][0]["pid"], signal.SIGSTOP)
            time.sleep(0.05)

        return Case(
            kind,
            {},
            origin,
            lambda t: _process_view(lab.origin_pids),
            lambda h: all(state_of(r["pid"]) == "T" for r in h.data["processes"]),
            stop_first,
        )
    if kind == "kill":

        def fresh() -> Target:
            return resolve(f"pid:{sleepers(lab.origin).pid}", lab.state)

        return Case(
            kind,
            {},
            fresh,
            lambda t: _process_view(list(t.pids)),
            lambda h: all(state_of(r["pid"]) in (None, "Z") for r in h.data["processes"]),
        )
    if kind == "sysctl":

        def values(target: Target) -> dict[str, str]:
            return {k: netns.sysctl_get(target.netns, k) for k in SYSCTLS}

        def wanted(handle: Handle) -> bool:
            return values(resolve("client", lab.state)) == handle.data["values"]

        def first_only(handle: Handle) -> None:
            key, value = next(iter(handle.data["values"].items()))
            netns.sysctl_set(handle.data["netns"], key, value)

        return Case(
            kind,
            {"values": SYSCTLS},
            lambda: resolve("client", lab.state),
            values,
            wanted,
            first_only,
        )
    raise LookupError(kind)


PROXY_PORT = 9091


@pytest.fixture
def haproxy(lab: MiniLab, tmp_path: Path) -> Iterator[Callable[[], int]]:
    """A real HAProxy in master-worker mode (as the lab runs it) in the origin namespace,
    forwarding :9091 to the origin. Yields a function giving its current master's pid (a
    restart replaces it); every master it had is gone at the end."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 100\n"
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n"
        "  timeout server 5s\n"
        f"listen fwd\n  bind {ORIGIN_IP}:{PROXY_PORT}\n  server o {ORIGIN_IP}:{ORIGIN_PORT}\n"
    )
    log = (tmp_path / "haproxy.log").open("ab")  # a file: a restart reopens its stdout
    proc = netns.popen(lab.origin, ["haproxy", "-W", "-db", "-f", str(cfg)],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def master() -> int:
        found = subprocess.run(["pgrep", "-o", "-f", f"haproxy -W -db -f {cfg}"],
                               capture_output=True, text=True).stdout.split()  # fmt: skip
        assert found, "the test's haproxy is gone"
        return int(found[0])

    deadline = time.monotonic() + 10
    while http_get(lab.client, port=PROXY_PORT, timeout=0.5) != "ok":
        assert time.monotonic() < deadline and proc.poll() is None, "haproxy did not start"
        time.sleep(0.05)
    try:
        yield master
    finally:
        for _ in range(3):  # the first master, then any a restart started
            found = subprocess.run(["pgrep", "-f", f"haproxy -W -db -f {cfg}"],
                                   capture_output=True, text=True).stdout.split()  # fmt: skip
            for pid in map(int, found):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        proc.wait(timeout=10)
        log.close()


def proxy_case(kind: str, lab: MiniLab, master: Callable[[], int]) -> Case:
    """reload and restart are one-shot: visible as a new worker (reload) or a new master
    (restart) that serves again; their revert is a harmless no-op."""

    def serves(_target: Target) -> bool:
        return http_get(lab.client, port=PROXY_PORT) == "ok"

    def reloaded(handle: Handle) -> bool:
        return bool(set(children(handle.data["pid"])) - set(handle.data["workers"]))

    def restarted(handle: Handle) -> bool:
        return state_of(handle.data["pid"]) in (None, "Z") and master() != handle.data["pid"]

    return Case(
        kind,
        {"settle": 10},
        lambda: resolve(f"pid:{master()}", lab.state),
        serves,
        reloaded if kind == "reload" else restarted,
    )


@pytest.mark.parametrize("kind", sorted(fault_types()))
def test_contract(kind, lab, sleepers, ledger_dir, request):
    cls = fault_type(kind)
    try:
        if kind in ("reload", "restart"):
            case = proxy_case(kind, lab, request.getfixturevalue("haproxy"))
        else:
            case = make_case(kind, lab, sleepers)
    except LookupError:
        # A type without a case here must need a kernel feature this host lacks (netem: the
        # VM suite covers it); anything else is an untested fault type.
        try:
            capabilities.require(set(cls.features))
        except Exception as exc:
            pytest.skip(f"{kind}: {exc} (covered where the kernel has it)")
        pytest.fail(f"fault type {kind} has no contract case")
    run_contract(case, ledger_dir)


# --- real effects --------------------------------------------------------------------------


def test_nft_syn_drop_makes_connects_time_out(lab, ledger_dir):
    assert http_get(lab.client) == "ok"
    target = resolve("origin", lab.state)
    fault = fault_type("nft-filter").validate(target, {"tcp_flags": "syn", "dport": 8080})
    with FaultGuard() as guard:
        guard.apply(fault)
        assert http_get(lab.client, timeout=0.5) == "timeout"
        # Other ports are untouched: the rule matches dport 8080 only.
        assert http_get(lab.client, port=8081, timeout=0.5) == "ECONNREFUSED"
    assert http_get(lab.client) == "ok"
    assert Ledger().entries() == ([], [])


def test_nft_reject_seed_001_rule_resets_the_connection(lab, ledger_dir):
    """Seed 001's `--tcp-flags ACK,FIN ACK -j REJECT --reject-with tcp-reset`, on the
    origin's input: the client's SYN passes (no ACK), its handshake ACK is rejected with a
    reset, so the client's just-established connection is reset."""
    target = resolve("origin", lab.state)
    params = {
        "action": "reject",
        "reject_with": "tcp-reset",
        "tcp_flags": "ack,fin ack",
        "direction": "input",
        "dport": 8080,
    }
    before = tcp_counters(lab.client)["EstabResets"]
    with FaultGuard() as guard:
        guard.apply(fault_type("nft-filter").validate(target, params))
        result = http_get(lab.client, timeout=1)
        resets = tcp_counters(lab.client)["EstabResets"] - before
    assert result == "ECONNRESET"
    assert resets >= 1
    assert http_get(lab.client) == "ok"


def test_nft_loss_30_percent_shows_in_retransmissions(lab, ledger_dir):
    """30 % loss on the origin's input: the client, the sender, retransmits."""
    port, size = 9000, 200_000

    def retransmitted_while_sending() -> tuple[int, int]:
        before = tcp_counters(lab.client)
        send_bytes(lab.client, ORIGIN_IP, port, size)
        after = tcp_counters(lab.client)
        return after["RetransSegs"] - before["RetransSegs"], after["OutSegs"] - before["OutSegs"]

    # veth hands TCP 64 KB GSO packets and nftables drops whole ones: 200 kB would be ~4
    # packets, which 30 % loss spares entirely about once in 4 runs. One segment a packet:
    with netns.ipr(lab.client) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], gso_max_segs=1)
    with sink_server(lab.origin, ORIGIN_IP, port):
        clean, _ = retransmitted_while_sending()
        target = resolve("origin", lab.state)
        fault = fault_type("nft-loss").validate(target, {"probability": 30})
        with FaultGuard() as guard:
            guard.apply(fault)
            lossy, sent = retransmitted_while_sending()
    # A clean transfer may retransmit a few segments too (tail loss probes when the Python
    # sink falls behind on a busy machine): the loss must stand well above that.
    assert lossy >= clean + 10 and lossy >= 0.1 * sent, (lossy, clean, sent)


def test_nft_mangle_seed_004_reset_after_the_handshake(lab, ledger_dir):
    """Seed 004: a listener with TCP_DEFER_ACCEPT holds the handshake as a request socket
    until data comes; data whose ACK number a middlebox rewrote is answered with a reset.
    The client ignores it (its sequence number is the rewritten ACK: out of window), so its
    request just goes unanswered; once the rewrite is gone, the same kind of request works."""
    port = 9004
    listener = netns.run_in(lab.origin, socket.socket)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    listener.bind((ORIGIN_IP, port))
    listener.listen(16)
    target = resolve("origin", lab.state)
    params = {"field": "ack", "xor": 0x40000000, "tcp_flags": "psh,ack psh,ack",
              "dport": port, "direction": "input"}  # fmt: skip

    def request(timeout: float) -> str:
        def attempt() -> str:
            with socket.create_connection((ORIGIN_IP, port), timeout=timeout) as sock:
                time.sleep(0.2)  # the client waits: the listener still defers the handshake
                sock.sendall(b"ping")
                try:
                    return "ok" if sock.recv(4) == b"pong" else "closed"
                except TimeoutError:
                    return "timeout"
                except OSError as exc:
                    return errno.errorcode.get(exc.errno or 0, str(exc))

        return netns.run_in(lab.client, attempt)

    def answer_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(4)
            conn.sendall(b"pong")

    try:
        before = tcp_counters(lab.origin)["OutRsts"], tcp_counters(lab.client)["EstabResets"]
        with FaultGuard() as guard:
            guard.apply(fault_type("nft-mangle").validate(target, params))
            stalled = request(timeout=1.0)
            resets = tcp_counters(lab.origin)["OutRsts"] - before[0]
            seen = tcp_counters(lab.client)["EstabResets"] - before[1]
        server = threading.Thread(target=answer_one, daemon=True)
        server.start()
        after = request(timeout=5.0)
        server.join(timeout=10)
    finally:
        listener.close()
    assert stalled == "timeout"  # not ECONNRESET: the client never took the reset
    assert resets >= 1 and seen == 0, (resets, seen)
    assert after == "ok"


def test_sigstopped_origin_stops_answering_then_resumes(lab, ledger_dir):
    assert http_get(lab.client) == "ok"
    with FaultGuard() as guard:
        handle = guard.apply(fault_type("stop").validate(resolve("origin", lab.state), {}))
        assert {r["pid"] for r in handle.data["processes"]} == set(lab.origin_pids)
        assert all(state_of(p) == "T" for p in lab.origin_pids)
        assert http_get(lab.client, timeout=0.5) == "timeout"
    assert all(state_of(p) in ("S", "R") for p in lab.origin_pids)
    assert http_get(lab.client) == "ok"


def test_kill_refuses_a_reused_pid(lab, sleepers):
    proc = sleepers(lab.origin)
    fault = fault_type("kill").validate(resolve(f"pid:{proc.pid}", lab.state), {})
    handle = fault.prepare()
    handle.data["processes"][0]["started"] -= 1  # as if the pid now belonged to another program
    fault.apply(handle)
    assert state_of(proc.pid) in ("S", "R")
    fault.apply(fault.prepare())
    assert state_of(proc.pid) is None  # killed, and reaped (it was our child)


# --- targets --------------------------------------------------------------------------------


def test_targets_resolve_roles_patterns_and_pids(lab, sleepers):
    origin = resolve("origin", lab.state)
    assert origin.netns == lab.origin and origin.links == ("eth0",)
    assert origin.pids == (lab.state.processes[0].pid,) and origin.pattern is None
    assert resolve("client", lab.state).pids == ()
    workers = resolve("workers", lab.state)
    assert workers.netns == lab.client and workers.pattern
    proc = sleepers(lab.client)
    by_pid = resolve(f"pid:{proc.pid}", lab.state)
    assert by_pid.netns == lab.client and by_pid.pids == (proc.pid,)
    by_name = resolve("client:^sleep 120$", lab.state)
    stop = fault_type("stop").validate(by_name, {})
    assert [r["pid"] for r in stop.prepare().data["processes"]] == [proc.pid]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("gateway", "unknown target"),
        ("pid:1", "not in lab"),
        ("pid:abc", "needs a number"),
        ("client:(", "invalid pattern"),
        ("http://10.0.0.1:9000", "remote agents"),
    ],
)
def test_targets_refuse_what_is_not_in_the_lab(lab, target, message):
    with pytest.raises(FaultError) as info:
        resolve_local(target, lab.state)
    assert message in info.value.message
    if "remote" not in message:
        assert "client, origin, workers, ROLE:PATTERN, pid:N" in (info.value.hint or "")


def test_signal_faults_refuse_a_role_without_processes(lab):
    with pytest.raises(FaultError, match="recorded no process"):
        fault_type("stop").validate(resolve("client", lab.state), {})


def test_invalid_params_are_one_clear_error(lab):
    target = resolve("origin", lab.state)
    for kind, params, text in [
        ("nft-filter", {"tcp_flags": "ack,bogus ack"}, "unknown TCP flag"),
        ("nft-filter", {"dport": 70000}, "ports are 1-65535"),
        ("nft-filter", {"saddr": "198.18.1.300"}, "saddr"),
        ("nft-filter", {"colour": "red"}, "colour"),
        ("nft-loss", {}, "probability"),
        ("sysctl", {"values": {"kernel.pid_max": 1}}, "not per network namespace"),
        ("sysctl", {"values": {"net.ipv4.no_such_thing": 1}}, "unknown sysctl"),
    ]:
        with pytest.raises(FaultError, match=text):
            fault_type(kind).validate(target, params)


# --- the guard --------------------------------------------------------------------------


def test_guard_reverts_a_half_applied_fault_and_journals(lab, ledger_dir, tmp_path):
    """The second sysctl is rejected by the kernel after the first was written: the guard
    restores the first at once, removes the ledger entry and raises a FaultError."""
    target = resolve("client", lab.state)
    key = "net.ipv4.tcp_fin_timeout"
    before = netns.sysctl_get(lab.client, key)
    journal = Journal(tmp_path / "journal.jsonl")
    fault = fault_type("sysctl").validate(
        target, {"values": {key: 9, "net.ipv4.tcp_rmem": "not numbers"}}
    )
    seen: list[tuple[str, dict]] = []
    guard = FaultGuard(journal, annotate=lambda action, **f: seen.append((action, f)))
    with pytest.raises(FaultError, match="rejected"), guard:
        guard.apply(fault)
    journal.close()
    assert netns.sysctl_get(lab.client, key) == before
    assert Ledger().entries() == ([], [])
    events = [e["event"] for e in read_journal(tmp_path / "journal.jsonl")]
    assert events == ["fault.apply.failed", "fault.revert"]
    assert [a for a, _ in seen] == ["revert"]


def test_guard_reverts_lifo_and_keeps_a_failed_entry(lab, ledger_dir, tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    client = resolve("client", lab.state)
    ledger = Ledger()
    guard = FaultGuard(journal, ledger)
    with pytest.raises(FaultError, match="could not be reverted") as info, guard:
        first = guard.apply(fault_type("nft-loss").validate(client, {"probability": 5}))
        second = guard.apply(
            fault_type("sysctl").validate(client, {"values": {"net.ipv4.tcp_fin_timeout": 8}})
        )
        # Sabotage the sysctl's snapshot so its revert fails.
        second.data["previous"] = {"net.ipv4.tcp_fin_timeout": "not-a-number"}
    journal.close()
    assert "chaos revert-all" in (info.value.hint or "")
    events = [(e["event"], e["id"]) for e in read_journal(tmp_path / "journal.jsonl")]
    assert events[-2:] == [("fault.revert.failed", second.id), ("fault.revert", first.id)]
    (kept,), _ = ledger.entries()
    assert kept.handle.id == second.id
    assert first.data["table"] not in nft_ruleset(lab.client)
    netns.sysctl_set(lab.client, "net.ipv4.tcp_fin_timeout", 60)
    ledger.remove(second.id)


# --- CLI ------------------------------------------------------------------------------------


def test_cli_faults_types_lists_every_type(chaos_cli):
    result = chaos_cli("faults", "types")
    assert result.returncode == 0, result.stderr
    for kind in fault_types():
        assert kind in result.stdout
    assert "tcp_flags" in result.stdout and "probability" in result.stdout


def test_cli_list_and_revert_all(lab, ledger_dir, chaos_cli):
    client = resolve("client", lab.state)
    ledger = Ledger()
    guard = FaultGuard(ledger=ledger)
    handle = guard.apply(fault_type("nft-loss").validate(client, {"probability": 5}))
    bogus = Handle(kind="no-such-kind", target="client", data={})
    ledger.write(bogus)

    listed = chaos_cli("faults", "list")
    assert listed.returncode == 0, listed.stderr
    assert (
        handle.id in listed.stdout and "nft-loss" in listed.stdout and "(running)" in listed.stdout
    )
    as_json = json.loads(chaos_cli("faults", "list", "--json").stdout)
    assert {e["handle"]["id"] for e in as_json} == {handle.id, bogus.id}

    result = chaos_cli("revert-all", "--force")  # the owner, this test, is running
    assert result.returncode == FaultError.exit_code
    assert f"reverted {handle.id} nft-loss on client" in result.stdout
    assert "unknown fault type 'no-such-kind'" in result.stderr and "Traceback" not in result.stderr
    assert handle.data["table"] not in nft_ruleset(lab.client)
    assert [e.handle.id for e in ledger.entries()[0]] == [bogus.id]

    ledger.remove(bogus.id)
    again = chaos_cli("revert-all")
    assert again.returncode == 0 and "nothing to revert" in again.stdout
    assert "no active faults" in chaos_cli("faults", "list").stdout
