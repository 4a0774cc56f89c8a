"""``chaos agent``: serve the fault types over HTTP, for faults on another host or container.

A controller (see :mod:`chaos.agent.client`) asks the agent to apply a fault; the agent
validates and applies it through the same :class:`~chaos.faults.engine.guard.FaultGuard` and
on-disk ledger as a local run, and holds it under a **lease** that the controller renews.
When a lease lapses (the controller died, or the network between them was cut) the agent
reverts the fault by itself. On SIGTERM, SIGHUP (its terminal closed), SIGQUIT or Ctrl-C it
reverts everything and exits with 128 + the signal; after a
SIGKILL, ``chaos revert-all`` on the agent's host (same ``CHAOS_LEDGER_DIR``) restores
everything from the ledger, and the next agent started on that ledger reverts what the dead
one left.

Security: every request carries ``Authorization: Bearer <token>`` (``--token-file`` or
``$CHAOS_AGENT_TOKEN``; no token, no agent); the agent binds to 127.0.0.1 unless
``--listen`` says otherwise; and it touches only the targets on its allow-list. Across a
network it should serve HTTPS (``--tls-cert`` and ``--tls-key``, PEM; TLS 1.2 or newer), so
the token does not travel in the clear; the controller then uses ``https://`` URLs and
trusts the certificate through ``params.ca_file`` (:mod:`chaos.agent.client`). The TLS
handshake happens in the request's own thread, with a timeout, so a client that stalls it
holds up no one else.

Targets. ``--allow`` (repeated) names what the agent may touch:

- a role of the lab given by ``--lab NAME`` (``client``, ``gateway``, ``proxy``,
  ``origin``), resolved through the lab's state file exactly as a local run does: the role's
  namespace, links and recorded processes; ``ROLE:PATTERN`` and ``workers`` (the client
  role) work too;
- a network namespace by name (``ip netns`` name): its links; processes by ``NS:PATTERN``;
- ``host``: the agent's own network namespace (most fault types refuse it by themselves).

``pid:N`` is accepted when process N lives in an allowed namespace. Anything else is 403.
``--allow-type TARGET=TYPE[,TYPE]`` limits the fault types on one entry (``origin=stop``:
no ``kill`` there); an entry without it takes every type. ``PATTERN`` is RE2 syntax
(:class:`~chaos.kernel.processes.CommandPattern`): matched in linear time, whatever it is.

The HTTP plumbing (TLS, the token check, body and connection limits against hostile
clients) is :mod:`chaos.agent.server`; this module is the agent's logic: what it may touch,
the faults it holds and their leases, and the endpoints (:func:`routes`). Requests are
checked (target resolved, params validated) outside the lock that orders applies, and a
lapsing lease is reverted without waiting for that lock.

API (JSON in and out; errors are ``{"error": ..., "hint": ...}`` with a 4xx status)::

    GET    /v1/health               agent, allow-list, active and failed faults
    GET    /v1/types                fault types, their params (JSON Schema), reversible
    GET    /v1/faults               active faults with the seconds left on their lease
    POST   /v1/validate             {type, target, params, lease_s}: check, change nothing
    POST   /v1/faults               same body (+ optional id) → 201 {id, expires_in, ...}
    GET    /v1/faults/ID            one active fault
    POST   /v1/faults/ID/renew      {lease_s?} → {id, expires_in}
    DELETE /v1/faults/ID            revert now → {id, reverted: true}
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chaos import capabilities
from chaos.agent.server import API, ApiError, Route, Server, parse_body, parse_listen, server_tls
from chaos.endings import ENDING_SIGNALS
from chaos.errors import ChaosError, FaultError, NotRootError
from chaos.faults.base import Fault, Handle, Target
from chaos.faults.engine.guard import FaultGuard, revert_leftovers
from chaos.faults.engine.ledger import Ledger
from chaos.faults.engine.targets import links_of, resolve_local
from chaos.faults.registry import fault_type, fault_types
from chaos.kernel import netns, processes
from chaos.lab.topology import LabState

__all__ = ["Agent", "FaultRequest", "RenewRequest", "Scope", "read_token", "routes", "serve"]

TOKEN_ENV = "CHAOS_AGENT_TOKEN"
DEFAULT_PORT = 7700
DEFAULT_LEASE = 10.0
MAX_LEASE = 3600.0
MIN_TOKEN = 16
#: How often the reaper looks for lapsed leases: the revert comes at most this late.
REAP_EVERY = 0.1
TOKEN_HINT = "generate one with `openssl rand -hex 32` and pass --token-file FILE"


class FaultRequest(BaseModel):
    """The body of POST /v1/faults and /v1/validate."""

    model_config = ConfigDict(extra="forbid")

    type: str
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    lease_s: float = Field(default=DEFAULT_LEASE, gt=0, le=MAX_LEASE)
    #: chosen by the controller, so its own ledger names the fault before the apply
    id: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,32}$")


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_s: float | None = Field(default=None, gt=0, le=MAX_LEASE)


# --- configuration -----------------------------------------------------------------------


def read_token(token_file: str | None) -> str:
    """The token from ``token_file`` or $CHAOS_AGENT_TOKEN; refuse to run without one."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise FaultError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        source = token_file
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            raise FaultError(
                "chaos agent needs a token: none given (--token-file FILE or $CHAOS_AGENT_TOKEN)",
                TOKEN_HINT,
            )
    if len(token) < MIN_TOKEN:
        raise FaultError(
            f"the agent token from {source} is too short ({len(token)} < {MIN_TOKEN} characters)",
            TOKEN_HINT,
        )
    return token


class Scope:
    """The allow-list, and how target strings resolve against it."""

    def __init__(
        self, allow: list[str], lab: str | None, allow_types: list[str] | None = None
    ) -> None:
        if not allow:
            raise FaultError(
                "chaos agent needs an allow-list: it touches only the targets named by --allow",
                "e.g. --lab mylab --allow origin, or --allow NETNS, or --allow host",
            )
        self.lab = lab
        state = self._lab_state() if lab else None
        roles = state.namespaces if state else {}
        self.roles: dict[str, str] = {}
        self.plain: list[str] = []
        self.host = False
        for name in dict.fromkeys(allow):
            role, sep, path = name.partition("=")
            if sep:
                self.roles[role] = self._namespace_file(name, role, path)
            elif name == "host":
                self.host = True
            elif name in roles:
                self.roles[name] = roles[name]
            elif netns.exists(name):
                self.plain.append(name)
            else:
                where = f"lab {lab} has roles {', '.join(sorted(roles))}; " if state else ""
                raise FaultError(
                    f"--allow {name!r}: not a role of the lab, a network namespace, or host",
                    f"{where}`ip netns list` shows the namespaces",
                )
        self.allow = list(dict.fromkeys(allow))
        self.types = self._parse_types(allow_types or [])

    def _parse_types(self, given: list[str]) -> dict[str, frozenset[str]]:
        """``--allow-type TARGET=TYPE[,TYPE...]``: the only fault types allowed on TARGET (an
        entry of --allow); targets without one take every type."""
        known = set(fault_types())
        names = {name.partition("=")[0] for name in self.allow}
        out: dict[str, frozenset[str]] = {}
        for text in given:
            target, sep, kinds = text.partition("=")
            wanted = frozenset(k.strip() for k in kinds.split(",") if k.strip())
            if not sep or not wanted:
                raise FaultError(
                    f"--allow-type {text!r}: expected TARGET=TYPE[,TYPE...]",
                    "e.g. --allow origin --allow-type origin=stop,sysctl",
                )
            if target not in names:
                raise FaultError(
                    f"--allow-type {text!r}: {target!r} is not given by --allow",
                    f"name one of {', '.join(sorted(names))}",
                )
            unknown = sorted(wanted - known)
            if unknown:
                raise FaultError(
                    f"--allow-type {text!r}: unknown fault type(s) {', '.join(unknown)}",
                    f"known fault types: {', '.join(sorted(known))}",
                )
            out[target] = out.get(target, frozenset()) | wanted
        return out

    def check_type(self, kind: str, text: str, target: Target) -> None:
        """403 when ``--allow-type`` limits the allow-list entry of ``target``."""
        entry = self._entry_of(text, target)
        allowed = self.types.get(entry) if entry is not None else None
        if allowed is not None and kind not in allowed:
            raise ApiError(
                403,
                f"fault type {kind!r} is not allowed on {entry} "
                f"(allowed there: {', '.join(sorted(allowed))})",
                f"restart the agent with --allow-type {entry}={','.join(sorted(allowed | {kind}))}",
            )

    def _entry_of(self, text: str, target: Target) -> str | None:
        """The --allow entry a resolved target falls under (pid:N: by its namespace)."""
        if target.netns is None:
            return "host"
        base = text.strip().partition(":")[0]
        if base == "workers":
            return "client"
        if base in self.roles or base in self.plain:
            return base
        for role, namespace in self.roles.items():
            if namespace == target.netns:
                return role
        return target.netns if target.netns in self.plain else None

    @staticmethod
    def _namespace_file(text: str, role: str, path: str) -> str:
        """``ROLE=PATH``: the namespace whose file is PATH, named ROLE (e.g. a container's
        own, ``proxy=/proc/self/ns/net``: faults then change the namespace the agent runs in,
        which on a real host is the host's network)."""
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", role) or not path.startswith("/"):
            raise FaultError(
                f"--allow {text!r}: expected ROLE=PATH with an absolute namespace file",
                "e.g. --allow proxy=/proc/self/ns/net (the agent's own namespace)",
            )
        if not os.path.exists(path):
            raise FaultError(f"--allow {text!r}: {path} does not exist", "give a netns file")
        return path

    def _lab_state(self) -> LabState:
        assert self.lab is not None
        state = LabState.load(self.lab)
        if state is None:
            raise FaultError(
                f"lab {self.lab!r} does not exist on this host (no state file)",
                "bring it up first (`chaos lab up`), or check the name with `chaos lab status`",
            )
        return state

    def resolve(self, text: str) -> Target:
        """The Target for ``text``: 403 when it is not on the allow-list, 404 when unknown."""
        text = text.strip()
        base, sep, rest = text.partition(":")
        if text == "host" and self.host:
            return Target("host", None, links_of(None))
        if base == "workers" and not sep:
            base = "client"  # the Locust workers live in the client namespace
        if base != "pid" and base not in self.roles and base not in self.plain:
            raise ApiError(
                403,
                f"target {text!r} is not on this agent's allow-list ({', '.join(self.allow)})",
                "restart the agent with --allow for it, or aim the fault at an allowed target",
            )
        # One LabState over exactly the allowed namespaces: targets.resolve_local then handles
        # roles, workers, NS:PATTERN and pid:N as in a local run, and nothing else exists.
        lab = self._lab_state() if self.lab else None
        state = LabState(
            name=self.lab or "agent",
            namespaces={**{ns: ns for ns in self.plain}, **self.roles},
            processes=[p for p in (lab.processes if lab else []) if p.role in self.roles],
        )
        try:
            return resolve_local(text, state)
        except FaultError as exc:
            if base == "pid" and rest.isdigit() and processes.state_of(int(rest)) is not None:
                raise ApiError(
                    403,
                    f"target {text!r}: process {rest} is not in a namespace on this agent's "
                    f"allow-list ({', '.join(self.allow)})",
                    "aim the fault at a process inside an allowed namespace",
                ) from None
            raise ApiError.of(404, exc) from None


# --- the agent ---------------------------------------------------------------------------


class JsonLog:
    """The guard's journal: one JSON line per event on the agent's stderr."""

    def event(self, name: str, /, **fields: Any) -> None:
        line = {"t": round(time.time(), 3), "event": name, **fields}
        print(json.dumps(line, default=str), file=sys.stderr, flush=True)


@dataclass
class Lease:
    id: str
    handle: Handle
    request: FaultRequest
    lease_s: float
    expires: float  # time.monotonic()
    since: float  # wall clock

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.request.type,
            "target": self.request.target,
            "params": self.request.params,
            "lease_s": self.lease_s,
            "expires_in": round(max(0.0, self.expires - time.monotonic()), 3),
            "since": self.since,
            "handle": self.handle.id,
        }


class Agent:
    def __init__(self, scope: Scope, ledger: Ledger | None = None) -> None:
        self.scope = scope
        self.log = JsonLog()
        self.guard = FaultGuard(self.log, ledger)
        self.leases: dict[str, Lease] = {}
        # _leases guards the dict (renewals are quick); _changes serialises applies (and
        # shutdown after them); the ledger's lock orders every kernel change.
        self._leases = threading.Lock()
        self._changes = threading.Lock()
        self._stop = threading.Event()
        self.failed: list[str] = []

    # --- requests -------------------------------------------------------------------------
    def check(self, request: FaultRequest) -> Fault:
        """type → target → params → kernel features; every failure is an ApiError."""
        try:
            cls = fault_type(request.type)
        except FaultError as exc:
            raise ApiError.of(404, exc) from None
        target = self.scope.resolve(request.target)
        self.scope.check_type(request.type, request.target, target)
        try:
            fault = cls.validate(target, request.params)
            capabilities.require(set(cls.features))
        except ChaosError as exc:
            raise ApiError.of(400, exc) from None
        return fault

    def apply(self, request: FaultRequest) -> dict[str, Any]:
        fault = self.check(request)  # outside the lock: a slow check holds up no one else
        with self._changes:
            if self._stop.is_set():
                raise ApiError(503, "the agent is shutting down", "start it again")
            if request.id is not None and request.id in self.leases:
                raise ApiError(409, f"fault {request.id} is already active", "use a new id")
            try:
                handle = self.guard.apply(
                    fault, api_id=request.id, lease_s=request.lease_s, via="agent"
                )
            except ChaosError as exc:
                # The guard already reverted what the failed apply left.
                raise ApiError.of(409, exc) from None
            fault_id = request.id or handle.id
            body = {"id": fault_id, "type": handle.kind, "target": handle.target}
            if not type(fault).reversible:
                return {**body, "reversible": False, "expires_in": None}
            lease = Lease(
                fault_id,
                handle,
                request,
                request.lease_s,
                time.monotonic() + request.lease_s,
                time.time(),
            )
            with self._leases:
                self.leases[fault_id] = lease
            return {
                **body,
                "reversible": True,
                "lease_s": lease.lease_s,
                "expires_in": lease.lease_s,
            }

    def renew(self, fault_id: str, request: RenewRequest) -> dict[str, Any]:
        with self._leases:
            lease = self._lease(fault_id)
            if request.lease_s is not None:
                lease.lease_s = request.lease_s
            lease.expires = time.monotonic() + lease.lease_s
            return {"id": fault_id, "expires_in": lease.lease_s}

    def show(self, fault_id: str) -> dict[str, Any]:
        with self._leases:
            return self._lease(fault_id).to_json()

    def revert(self, fault_id: str, why: str = "request") -> dict[str, Any]:
        # Not under _changes: a lapsing lease never waits behind applies. Taking the lease
        # out of the dict is what makes one caller (DELETE or the reaper) its only reverter.
        with self._leases:
            lease = self._lease(fault_id)
            del self.leases[fault_id]
        self.log.event("agent.revert", id=fault_id, why=why)
        try:
            self.guard.revert(lease.handle)
        except FaultError as exc:
            # Ledger entry kept; the guard retries at shutdown, `chaos revert-all` after.
            self.failed.append(f"{fault_id}: {exc.message}")
            raise ApiError.of(500, exc) from None
        return {"id": fault_id, "reverted": True}

    def _lease(self, fault_id: str) -> Lease:
        lease = self.leases.get(fault_id)
        if lease is None:
            raise ApiError(
                404,
                f"no active fault {fault_id!r} on this agent (reverted, or its lease lapsed)",
                f"GET {API}/faults lists the active faults",
            )
        return lease

    def health(self) -> dict[str, Any]:
        with self._leases:
            active = len(self.leases)
        return {
            "ok": not self.failed,
            "api": API,
            "pid": os.getpid(),
            "lab": self.scope.lab,
            "allow": self.scope.allow,
            "active": active,
            "failed_reverts": self.failed,
            "ledger": str(self.guard.ledger.dir),
        }

    def faults(self) -> dict[str, Any]:
        with self._leases:
            return {"faults": [lease.to_json() for lease in self.leases.values()]}

    @staticmethod
    def types() -> dict[str, Any]:
        return {
            "types": [
                {
                    "type": kind,
                    "reversible": cls.reversible,
                    "features": list(cls.features),
                    "params": cls.params_model.model_json_schema(),
                }
                for kind, cls in sorted(fault_types().items())
            ]
        }

    def validate(self, request: FaultRequest) -> dict[str, Any]:
        fault = self.check(request)
        return {
            "ok": True,
            "type": request.type,
            "target": request.target,
            "reversible": type(fault).reversible,
        }

    # --- leases and lifetime --------------------------------------------------------------
    def reap(self) -> None:
        """Revert every fault whose lease lapsed, until stopped."""
        while not self._stop.wait(REAP_EVERY):
            now = time.monotonic()
            with self._leases:
                lapsed = [i for i, lease in self.leases.items() if lease.expires <= now]
            for fault_id in lapsed:
                try:
                    self.revert(fault_id, why="lease lapsed")
                except ApiError:
                    continue  # renewed or deleted meanwhile, or a failed revert (recorded)

    def revert_leftovers(self) -> None:
        """Revert what a dead agent (or controller) left in this ledger: its leases lapsed."""
        for done in revert_leftovers(self.guard.ledger):
            handle = done.entry.handle
            if done.outcome == "failed":
                self.log.event("agent.leftover.failed", id=handle.id, error=done.error)
            elif done.outcome != "left":
                self.log.event("agent.leftover.reverted", id=handle.id, kind=handle.kind)

    def shutdown(self) -> None:
        """Stop reaping and revert everything still applied (newest first)."""
        self._stop.set()
        with self._changes, self._leases:
            self.leases.clear()
        self.guard.revert_all()


def routes(agent: Agent) -> tuple[Route, ...]:
    """The API (see the module's docstring) on ``agent``."""

    def fault_request(body: dict[str, Any] | None) -> FaultRequest:
        return parse_body(FaultRequest, body or {})

    return (
        Route("GET", "/health", lambda _id, _body: (200, agent.health())),
        Route("GET", "/types", lambda _id, _body: (200, agent.types())),
        Route("GET", "/faults", lambda _id, _body: (200, agent.faults())),
        Route("POST", "/faults", lambda _id, b: (201, agent.apply(fault_request(b))), body=True),
        Route(
            "POST", "/validate", lambda _id, b: (200, agent.validate(fault_request(b))), body=True
        ),
        Route("GET", "/faults/(?P<id>[^/]+)", lambda i, _body: (200, agent.show(str(i)))),
        Route(
            "POST",
            "/faults/(?P<id>[^/]+)/renew",
            lambda i, b: (200, agent.renew(str(i), parse_body(RenewRequest, b or {}))),
            body=True,
        ),
        Route("DELETE", "/faults/(?P<id>[^/]+)", lambda i, _body: (200, agent.revert(str(i)))),
    )


def serve(
    listen: str,
    token_file: str | None,
    allow: list[str],
    lab: str | None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allow_types: list[str] | None = None,
) -> int:
    """Run the agent until SIGTERM, SIGHUP, SIGQUIT or Ctrl-C; then revert everything.
    Returns the exit code: 128 + the signal."""
    if os.geteuid() != 0:
        raise NotRootError(
            "the agent applies faults in namespaces: it needs root",
            "run it as root: `sudo .venv/bin/chaos agent ...`",
        )
    token = read_token(token_file)
    tls = server_tls(tls_cert, tls_key)
    host, port = parse_listen(listen)
    agent = Agent(Scope(allow, lab, allow_types))
    agent.revert_leftovers()
    try:
        server = Server((host, port), token, routes(agent), tls)
    except OSError as exc:
        raise FaultError(
            f"the agent cannot listen on {host}:{port}: {exc.strerror}",
            "choose an address of this host (or namespace) and a free port with --listen",
        ) from None
    owner = os.getpid()
    stopped_by: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked helper (pyroute2) inherited this handler
            os._exit(128 + signum)
        stopped_by.append(signum)
        # shutdown() waits for serve_forever, which runs in this (main) thread: not here.
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGINT, *ENDING_SIGNALS):
        signal.signal(sig, stop)
    reaper = threading.Thread(target=agent.reap, name="lease-reaper", daemon=True)
    reaper.start()
    bound_host, bound_port = server.server_address[:2]
    print(
        f"chaos agent listening on {'https' if tls else 'http'}://{bound_host}:{bound_port}{API} "
        f"(allow: {', '.join(agent.scope.allow)}; ledger: {agent.guard.ledger.dir})",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        active = len(agent.guard.active)
        agent.shutdown()  # raises FaultError (exit 7) if a revert failed
        reaper.join(timeout=5)
        print(f"chaos agent stopped; reverted {active} fault(s)", flush=True)
    return 128 + stopped_by[0] if stopped_by else 0
