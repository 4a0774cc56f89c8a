"""The controller's side of the remote agent: a fault whose target is an agent URL.

A scenario aims a fault at a target on an agent (``chaos agent``, :mod:`chaos.agent.service`)
by giving the agent's URL and the target there as one string::

    faults:
      - type: nft-filter
        target: http://198.18.3.2:7700/origin      # agent URL + the agent's target
        for: 20s
        params: {dport: 8080, token_env: ORIGIN_AGENT_TOKEN, lease: 5s}

Three params belong to the controller and are not sent as fault params: ``token_env``, the
environment variable that holds the agent's token (default ``CHAOS_AGENT_TOKEN``; the
token itself is never written anywhere), ``lease`` (default 10 s), how long the agent
keeps the fault when it hears nothing, and ``ca_file``, for an agent served over TLS
(``https://``; ``chaos agent --tls-cert/--tls-key``): the PEM file of the CA that signed
the agent's certificate, or the self-signed certificate itself (default: the system's
trust store). The certificate must name the host of the URL (subjectAltName).

The controller renews every lease a third of the way through, from one background thread;
a lease that could not be renewed in time is *lost* (the agent has reverted the fault), and
the ``on_lost`` callback reports it.

Before the run, :func:`validate_remote` asks the agent to check the fault
(``POST /v1/validate``): the agent is reachable, the token is accepted, and the type,
target and params are valid there. Agent errors become :class:`FaultError` with the agent's
own message and hint.

A :class:`RemoteFault` goes through the controller's :class:`~chaos.faults.engine.guard.FaultGuard`
like any fault: its handle (kind ``remote``: agent URL, target, fault id, ``token_env``) is
in the controller's ledger, so ``chaos revert-all`` on the controller asks the agent to
revert (an agent that no longer knows the fault has reverted it already). The fault id is
chosen here, before the apply, so the ledger names it even if the controller dies during
the request.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from pydantic import Field

from chaos.errors import FaultError
from chaos.faults.base import Fault, Handle, HandleData, Params, RemoteTarget, Target
from chaos.scenario.model import Duration, FaultSpec

KIND = "remote"
API = "/v1"
DEFAULT_TOKEN_ENV = "CHAOS_AGENT_TOKEN"
#: params that configure the controller's side, never sent to the agent
CONTROLLER_KEYS = ("token_env", "lease", "ca_file")
#: long enough for a `stop` fault's settle time, or a validation's kernel probes, on the agent
APPLY_TIMEOUT = 40.0
TIMEOUT = 5.0


class AgentUnreachable(FaultError):
    """No HTTP answer from the agent (refused, timed out, network cut)."""


def is_agent_url(text: str) -> bool:
    """Whether a fault target names a target on an agent (``http(s)://...``): the one test."""
    return text.strip().startswith(("http://", "https://"))


def remote_target(text: str) -> RemoteTarget | None:
    """``http://HOST:PORT/TARGET`` split into the agent's base URL and its target; None for
    a target in the local lab. FaultError when an agent URL lacks a part."""
    if not is_agent_url(text):
        return None
    scheme, _, rest = text.strip().partition("://")
    netloc, _, target = rest.partition("/")
    target = unquote(target)
    if not netloc or not target:
        raise FaultError(
            f"agent target {text!r}: expected http://HOST:PORT/TARGET (or https://)",
            "e.g. http://198.18.3.2:7700/origin (TARGET is on the agent's --allow list; "
            "https:// when the agent runs with --tls-cert)",
        )
    return RemoteTarget(f"{scheme}://{netloc}", target)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the agent's certificate against ``ca_file`` (PEM), or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise FaultError(
            f"cannot load ca_file {ca_file}: {getattr(exc, 'strerror', None) or exc}",
            "params.ca_file names a PEM file: the CA of the agent's certificate, or the "
            "self-signed certificate itself",
        ) from None


class AgentClient:
    """JSON over HTTP(S) to one agent; every failure is a FaultError with the agent's words."""

    def __init__(self, base: str, token: str, ca_file: str | None = None) -> None:
        self.base = base
        self.token = token
        if ca_file is not None and not base.startswith("https://"):
            raise FaultError(
                f"ca_file is set for {base}, which is plain HTTP",
                "use an https:// agent URL (agent started with --tls-cert), or drop ca_file",
            )
        self._tls = tls_context(ca_file) if base.startswith("https://") else None

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = TIMEOUT
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}{API}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._tls) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise FaultError(
                    f"agent {self.base}: its TLS certificate is not trusted: "
                    f"{reason.verify_message or reason}",
                    "set params.ca_file to the CA of the agent's certificate (or to the "
                    "self-signed certificate); it must name the URL's host (subjectAltName)",
                ) from None
            raise AgentUnreachable(
                f"agent {self.base} is unreachable: {reason}",
                "is `chaos agent` running there, listening on that address (--listen), and "
                "reachable from the controller?",
            ) from None

    def expect(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
        timeout: float = TIMEOUT,
    ) -> dict[str, Any]:
        status, answer = self.call(method, path, body, timeout)
        if status in ok:
            return answer
        message = answer.get("error") or f"HTTP {status}"
        hint = answer.get("hint")
        if status == 401:
            hint = "the agent rejected the token: check the variable named by params.token_env"
        raise FaultError(f"agent {self.base}: {message} (HTTP {status})", hint)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": f"not a JSON answer: {raw[:80]!r}"}
    return value if isinstance(value, dict) else {"error": f"unexpected answer {value!r}"}


def _token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise FaultError(
            f"no agent token: ${token_env} is not set",
            f"export {token_env}=<the agent's token>, or name another variable in params.token_env",
        )
    return token


# --- leases ------------------------------------------------------------------------------


@dataclass
class _Lease:
    client: AgentClient
    lease_s: float
    deadline: float  # when the agent reverts, at the latest, without a renewal (monotonic)
    due: float  # next renewal
    on_lost: Callable[[str], None] | None


class LeaseKeeper:
    """Renews every remote fault's lease from one thread, a third of the way through it."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self,
        fault_id: str,
        client: AgentClient,
        lease_s: float,
        on_lost: Callable[[str], None] | None,
        granted_at: float,
    ) -> None:
        lease = _Lease(client, lease_s, granted_at + lease_s, granted_at + lease_s / 3, on_lost)
        with self._lock:
            self._leases[fault_id] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
        self._wake.set()

    def drop(self, fault_id: str) -> None:
        with self._lock:
            self._leases.pop(fault_id, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._leases:
                    self._thread = None
                    return
                now = time.monotonic()
                due = [(i, lease) for i, lease in self._leases.items() if lease.due <= now]
                wait = min(lease.due for lease in self._leases.values()) - now
            for fault_id, lease in due:
                self._renew(fault_id, lease)
            self._wake.wait(max(0.01, min(wait, 0.5)) if not due else 0)
            self._wake.clear()

    def _renew(self, fault_id: str, lease: _Lease) -> None:
        sent = time.monotonic()
        # Never wait past the lease: a renewal that comes back too late is no renewal.
        timeout = max(0.2, min(TIMEOUT, lease.deadline - sent))
        try:
            lease.client.expect(
                "POST",
                f"/faults/{quote(fault_id)}/renew",
                {"lease_s": lease.lease_s},
                timeout=timeout,
            )
        except AgentUnreachable as exc:
            if time.monotonic() < lease.deadline:
                lease.due = time.monotonic() + min(0.2, lease.lease_s / 10)  # retry soon
                return
            self._lost(fault_id, lease, f"its lease ({lease.lease_s:g} s) lapsed: {exc.message}")
            return
        except FaultError as exc:  # the agent answered: it no longer holds the fault
            self._lost(fault_id, lease, exc.message)
            return
        lease.deadline = sent + lease.lease_s  # the agent counts from later: we are safe
        lease.due = sent + lease.lease_s / 3

    def _lost(self, fault_id: str, lease: _Lease, why: str) -> None:
        with self._lock:
            if self._leases.pop(fault_id, None) is None:
                return  # reverted meanwhile: nothing was lost
        if lease.on_lost is not None:
            lease.on_lost(
                f"remote fault {fault_id} on {lease.client.base} was lost ({why}); "
                "the agent reverted it"
            )


LEASES = LeaseKeeper()


# --- the fault ---------------------------------------------------------------------------


class RemoteParams(Params):
    """What the controller knows of a fault on an agent (the token stays in the env)."""

    agent: str = Field(description="the agent's base URL, http(s)://HOST:PORT")
    target: str = Field(description="the target on the agent (on its --allow list)")
    type: str = Field(description="the fault type, run by the agent")
    params: dict[str, Any] = Field(default_factory=dict, description="the fault's params")
    token_env: str = Field(default=DEFAULT_TOKEN_ENV, description="variable with the token")
    ca_file: str | None = Field(default=None, description="PEM CA for an https:// agent")
    lease: Duration = Field(default=10.0, gt=0, le=3600, description="lease, renewed by us")


class RemoteHandle(HandleData):
    """What the controller needs to revert a fault on an agent (the id is the handle's):
    the agent, the fault there, and where the token is (never the token itself)."""

    agent: str
    remote_target: str
    type: str
    token_env: str
    ca_file: str | None
    lease_s: float


class RemoteFault(Fault):
    """A fault applied, renewed and reverted by an agent; built by :func:`validate_remote`."""

    kind = KIND
    params_model = RemoteParams
    handle_model = RemoteHandle
    params: RemoteParams

    def __init__(self, target: Target, params: Params) -> None:
        super().__init__(target, params)
        self.on_lost: Callable[[str], None] | None = None

    @classmethod
    def validate(cls, target: Target | RemoteTarget, raw: dict[str, Any]) -> Fault:
        # Only validate_remote builds these: `type: remote` in a scenario is a mistake.
        if not isinstance(target, RemoteTarget):
            raise FaultError(
                f"{KIND} is not a fault type of its own",
                "give the fault's real type and an agent URL as its target, e.g. "
                "target: http://198.18.3.2:7700/origin",
            )
        return super().validate(target, raw)

    def prepare(self) -> Handle:
        p = self.params
        return self.handle(
            RemoteHandle(
                agent=p.agent,
                remote_target=p.target,
                type=p.type,
                token_env=p.token_env,
                ca_file=p.ca_file,
                lease_s=p.lease,
            )
        )

    def apply(self, handle: Handle) -> None:
        p = self.params
        client = AgentClient(p.agent, _token(p.token_env), p.ca_file)
        body = {
            "id": handle.id,
            "type": p.type,
            "target": p.target,
            "params": p.params,
            "lease_s": p.lease,
        }
        granted = time.monotonic()
        answer = client.expect("POST", "/faults", body, ok=(201,), timeout=APPLY_TIMEOUT)
        if answer.get("reversible", True):
            LEASES.add(handle.id, client, p.lease, self.on_lost, granted)

    @classmethod
    def revert(cls, handle: Handle) -> None:
        LEASES.drop(handle.id)  # first: a renewal must not race the DELETE
        data = RemoteHandle.of(handle)
        client = AgentClient(data.agent, _token(data.token_env), data.ca_file)
        try:
            # 404: the agent holds no such fault: reverted by its lease, or never applied.
            client.expect(
                "DELETE", f"/faults/{quote(handle.id)}", ok=(200, 404), timeout=APPLY_TIMEOUT
            )
        except AgentUnreachable as exc:
            raise FaultError(
                f"{exc.message}; the fault {handle.id} ({data.type} on "
                f"{data.remote_target}) is reverted by the agent when its lease "
                f"({data.lease_s:g} s) lapses",
                "if the agent's host also crashed, run `chaos revert-all` there (with the "
                "agent's CHAOS_LEDGER_DIR); then `chaos revert-all` here to clear the entry",
            ) from None


class _IrreversibleRemoteFault(RemoteFault):
    reversible: ClassVar[bool] = False


def split_params(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the controller's keys, the fault's own params)."""
    mine = {k: v for k, v in raw.items() if k in CONTROLLER_KEYS}
    return mine, {k: v for k, v in raw.items() if k not in CONTROLLER_KEYS}


def validate_remote(
    kind: str,
    where: RemoteTarget,
    raw: dict[str, Any],
    on_lost: Callable[[str], None] | None = None,
) -> RemoteFault:
    """Check a fault on an agent before the run (the agent validates it; nothing changes)."""
    mine, fault_params = split_params(raw)
    fault = RemoteFault.validate(
        where,
        {"agent": where.agent, "target": where.target, "type": kind, "params": fault_params}
        | mine,
    )
    assert isinstance(fault, RemoteFault)
    client = AgentClient(where.agent, _token(fault.params.token_env), fault.params.ca_file)
    answer = client.expect(
        "POST",
        "/validate",
        {
            "type": kind,
            "target": where.target,
            "params": fault_params,
            "lease_s": fault.params.lease,
        },
        timeout=APPLY_TIMEOUT,  # the agent probes the kernel features the fault needs
    )
    if not answer.get("reversible", True):
        fault = _IrreversibleRemoteFault(fault.target, fault.params)
    fault.on_lost = on_lost
    return fault


def agent_clients(specs: Iterable[FaultSpec]) -> list[AgentClient]:
    """One client for each agent that ``specs`` aim a fault at, to wait for its ``/health``
    (the token from ``params.token_env``, empty when unset)."""
    clients: dict[str, AgentClient] = {}
    for spec in specs:
        where = remote_target(spec.target)
        if where is not None and where.agent not in clients:
            token_env = str(spec.params.get("token_env", DEFAULT_TOKEN_ENV))
            ca_file = spec.params.get("ca_file")
            token = os.environ.get(token_env, "")
            ca = None if ca_file is None else str(ca_file)
            clients[where.agent] = AgentClient(where.agent, token, ca)
    return list(clients.values())
