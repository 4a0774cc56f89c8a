"""The proxy under test: HAProxy (default), nginx, or an external proxy of the user's.

Each kind renders its configuration from the scenario's :class:`ProxySpec` into the run
directory, checks it with the proxy's own checker, and starts the proxy in the foreground in
the proxy namespace, with its log going to ``<run>/logs/proxy.log``. Each connection (tcp
mode) or request (http mode) is logged on one line that starts with ``CONN``, so tests and the
report can compare what the proxy passed with what the origin received::

    CONN <client ip:port> <backend source ip:port | -> <server ip:port> <status> <bytes> ...
"""

from __future__ import annotations

import math
import os
import re
import resource
import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from chaos.errors import CapabilityError, ProcessStartError
from chaos.kernel import netns, processes
from chaos.kernel.processes import ProcessRecord
from chaos.scenario.model import ProxySpec

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def _has_sys_resource() -> bool:
    """CAP_SYS_RESOURCE (bit 24) lets root raise the hard fd limit; containers often drop it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _whole_seconds(seconds: float) -> int:
    # TCP keepalive timers are whole seconds at the socket level.
    return max(1, math.ceil(seconds))


@dataclass(frozen=True)
class Endpoints:
    listen_host: str
    listen_port: int
    origin_host: str
    origin_port: int


class Proxy(ABC):
    """One kind of proxy under test."""

    kind: str
    binary: str
    package: str

    def __init__(self, spec: ProxySpec, endpoints: Endpoints, conf_dir: Path) -> None:
        self.spec = spec
        self.endpoints = endpoints
        self.conf_dir = conf_dir

    @classmethod
    def executable(cls) -> str:
        path = shutil.which(cls.binary) or shutil.which(cls.binary, path="/usr/sbin:/sbin")
        if path is None:
            raise CapabilityError(
                f"{cls.binary} is not installed, and the scenario uses proxy kind {cls.kind}",
                f"install it: apt-get install {cls.package}",
            )
        return path

    @classmethod
    def version(cls) -> str | None:
        try:
            exe = cls.executable()
        except CapabilityError:
            return None
        out = subprocess.run([exe, *cls.version_args()], capture_output=True, text=True)
        text = (out.stdout + out.stderr).strip().splitlines()
        if not text:
            return None
        # "HAProxy version 2.6.12-1 2023/... - https://..." / "nginx version: nginx/1.22.1"
        return text[0].split(" - ")[0].replace("nginx version: ", "")

    @classmethod
    @abstractmethod
    def version_args(cls) -> list[str]: ...

    @abstractmethod
    def render(self) -> str:
        """The configuration file's text."""

    @abstractmethod
    def check_argv(self, conf: Path) -> list[str]: ...

    @abstractmethod
    def run_argv(self, conf: Path) -> list[str]: ...

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / f"{self.kind}.conf"

    def fds_needed(self) -> int:
        """File descriptors the proxy asks for: two per proxied connection, plus its own."""
        return 2 * self.spec.maxconn + 64

    def check_fd_limit(self) -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        try:
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            ceiling = hard
        can_raise = os.geteuid() == 0 and _has_sys_resource()
        limit = max(hard, ceiling) if can_raise else hard
        if self.fds_needed() > limit:
            raise CapabilityError(
                f"{self.kind} with maxconn {self.spec.maxconn} needs {self.fds_needed()} file "
                f"descriptors, but this host allows at most {limit} per process",
                f"lower lab.proxy.maxconn to {(limit - 64) // 2} or less, or raise the hard "
                "RLIMIT_NOFILE (ulimit -Hn) of the shell that runs chaos",
            )

    def write_config(self, namespace: str | None) -> Path:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        self.check(self.conf_path, namespace)
        return self.conf_path

    def check(self, conf: Path, namespace: str | None) -> None:
        # In the proxy's namespace: nginx's check binds its listen addresses.
        proc = netns.popen(
            namespace,
            self.check_argv(conf),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = proc.communicate()
        if proc.returncode != 0:
            raise ProcessStartError(
                f"{self.kind} rejected its generated configuration {conf}:\n" + output.strip(),
                "this is a bug if the scenario is valid; please report it with the file above",
            )

    def start(
        self, namespace: str, log_path: Path, tied: bool = False
    ) -> tuple[subprocess.Popen, ProcessRecord]:
        """``tied``: the proxy dies with this process (see :func:`processes.spawn`)."""
        conf = self.write_config(namespace)
        proc, record = processes.spawn(
            "proxy", self.kind, namespace, self.run_argv(conf), log_path, tied=tied
        )
        processes.wait_listening(
            proc, record, self.endpoints.listen_host, self.endpoints.listen_port
        )
        return proc, record


class HAProxy(Proxy):
    kind = "haproxy"
    binary = "haproxy"
    package = "haproxy"

    @classmethod
    def version_args(cls) -> list[str]:
        return ["-v"]

    def render(self) -> str:
        spec, ep, t = self.spec, self.endpoints, self.spec.timeouts
        http = spec.mode == "http"
        log_format = (
            "CONN %ci:%cp %bi:%bp %si:%sp %ST %B %ts %Tt"
            if http
            else "CONN %ci:%cp %bi:%bp %si:%sp - %B %ts %Tt"
        )
        lines = [
            "# generated by chaos from the scenario's lab.proxy; do not edit",
            "global",
            f"    maxconn {spec.maxconn}",
            f"    nbthread {spec.threads}",
            "    log stdout format raw local0",
            "",
            "defaults",
            f"    mode {spec.mode}",
            "    log global",
            "    option dontlognull  # readiness probes connect and send nothing",
            f'    log-format "{log_format}"',
            f"    maxconn {spec.maxconn}",
            f"    timeout connect {_ms(t.connect)}",
            f"    timeout client {_ms(t.client)}",
            f"    timeout server {_ms(t.server)}",
        ]
        if t.client_fin is not None:
            lines.append(f"    timeout client-fin {_ms(t.client_fin)}")
        if t.server_fin is not None:
            lines.append(f"    timeout server-fin {_ms(t.server_fin)}")
        if http:
            lines.append(f"    timeout http-keep-alive {_ms(t.http_keep_alive)}")
            if spec.upstream == "keep-alive":
                lines += ["    option http-keep-alive", "    http-reuse always"]
            else:
                # The server side is closed after every response; who sends the first FIN
                # then depends on the origin (close: server) or on HAProxy.
                lines.append("    option http-server-close")
        if spec.linger_zero:
            lines.append("    option nolinger")
        ka = spec.keepalive
        if ka.enabled:
            for side in ("cli", "srv"):  # both legs: either peer can vanish
                lines += [
                    f"    option {side}tcpka",
                    f"    {side}tcpka-idle {_whole_seconds(ka.idle)}s",
                    f"    {side}tcpka-intvl {_whole_seconds(ka.interval)}s",
                    f"    {side}tcpka-cnt {ka.count}",
                ]
        bind_options = (" defer-accept" if spec.defer_accept else "") + (
            " transparent" if spec.transparent else ""
        )
        lines += [
            "",
            "frontend fe",
            f"    bind {ep.listen_host}:{ep.listen_port}{bind_options}",
            "    default_backend origin",
            "",
            "backend origin",
            f"    server origin {ep.origin_host}:{ep.origin_port}",
            *(["    source 0.0.0.0 usesrc client"] if spec.transparent else []),
            "",
        ]
        return "\n".join(lines)

    def check_argv(self, conf: Path) -> list[str]:
        return [self.executable(), "-c", "-q", "-f", str(conf)]

    def run_argv(self, conf: Path) -> list[str]:
        return [self.executable(), "-db", "-f", str(conf)]


class Nginx(Proxy):
    kind = "nginx"
    binary = "nginx"
    package = "nginx-light libnginx-mod-stream"

    @classmethod
    def version_args(cls) -> list[str]:
        return ["-v"]

    def render(self) -> str:
        spec, ep, t = self.spec, self.endpoints, self.spec.timeouts
        base = self.conf_dir
        lines = []
        if spec.mode == "tcp":
            if not Path(NGINX_STREAM_MODULE).exists():
                raise CapabilityError(
                    "nginx's stream module is missing, and the scenario uses nginx in tcp mode",
                    "install it: apt-get install libnginx-mod-stream",
                )
            lines.append(f"load_module {NGINX_STREAM_MODULE};")
        lines += [
            "# generated by chaos from the scenario's lab.proxy; do not edit",
            "daemon off;",
            f"worker_processes {spec.threads};",
            f"pid {base}/nginx.pid;",
            f"worker_rlimit_nofile {spec.maxconn * 2 + 64};",
            f"events {{ worker_connections {spec.maxconn}; }}",
        ]
        options = ["reuseport", "backlog=4096"]
        if spec.defer_accept:
            options.append("deferred")
        if spec.keepalive.enabled:
            ka = spec.keepalive
            options.append(
                f"so_keepalive={_whole_seconds(ka.idle)}:{_whole_seconds(ka.interval)}:{ka.count}"
            )
        listen = f"listen {ep.listen_host}:{ep.listen_port} {' '.join(options)};"
        if spec.mode == "http":
            keepalive = spec.upstream == "keep-alive"
            lines += [
                "http {",
                "    log_format chaos 'CONN $remote_addr:$remote_port - $upstream_addr $status "
                "$bytes_sent $request_time';",
                "    access_log /dev/stdout chaos;",
                f"    client_body_temp_path {base}/tmp-body;",
                f"    proxy_temp_path {base}/tmp-proxy;",
                f"    fastcgi_temp_path {base}/tmp-fastcgi;",
                f"    uwsgi_temp_path {base}/tmp-uwsgi;",
                f"    scgi_temp_path {base}/tmp-scgi;",
                f"    keepalive_timeout {_ms(t.http_keep_alive)};",
                *(["    reset_timedout_connection on;"] if spec.linger_zero else []),
                "    upstream origin {",
                f"        server {ep.origin_host}:{ep.origin_port};",
                *(["        keepalive 64;"] if keepalive else []),
                "    }",
                "    server {",
                f"        {listen}",
                "        location / {",
                "            proxy_pass http://origin;",
                "            proxy_http_version 1.1;",
                f'            proxy_set_header Connection "{"" if keepalive else "close"}";',
                f"            proxy_connect_timeout {_ms(t.connect)};",
                f"            proxy_read_timeout {_ms(t.server)};",
                f"            proxy_send_timeout {_ms(t.server)};",
                f"            send_timeout {_ms(t.client)};",
                "        }",
                "    }",
                "}",
            ]
        else:
            lines += [
                "stream {",
                "    log_format chaos 'CONN $remote_addr:$remote_port - $upstream_addr - "
                "$bytes_sent $session_time';",
                "    access_log /dev/stdout chaos;",
                "    server {",
                f"        {listen}",
                f"        proxy_pass {ep.origin_host}:{ep.origin_port};",
                f"        proxy_connect_timeout {_ms(t.connect)};",
                f"        proxy_timeout {_ms(max(t.client, t.server))};",
                "    }",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def _base_argv(self, conf: Path) -> list[str]:
        # -e: nginx opens its default error log before reading the config; keep it in the run.
        return [self.executable(), "-p", str(self.conf_dir), "-e", "stderr", "-c", str(conf)]

    def check_argv(self, conf: Path) -> list[str]:
        return [*self._base_argv(conf), "-t", "-q"]

    def run_argv(self, conf: Path) -> list[str]:
        return self._base_argv(conf)


PROXIES: dict[str, type[Proxy]] = {"haproxy": HAProxy, "nginx": Nginx}


def proxy_for(spec: ProxySpec, endpoints: Endpoints, conf_dir: Path) -> Proxy:
    """The proxy that the lab starts; ``external`` proxies are the user's to run."""
    return PROXIES[spec.kind](spec, endpoints, conf_dir)


# --- logs --------------------------------------------------------------------------------

_ADDR = r"(\S+):(\d+)"
_CONN_RE = re.compile(rf"^CONN {_ADDR} (?:{_ADDR}|-) (\S+) (\S+) (\S+)")


@dataclass(frozen=True)
class ProxyLogEntry:
    client: tuple[str, int]
    backend_source: tuple[str, int] | None
    server: str
    status: str
    bytes: str


def parse_log(path: Path) -> list[ProxyLogEntry]:
    """The ``CONN`` lines of a proxy log (other lines are the proxy's own messages)."""
    entries = []
    for line in Path(path).read_text(errors="replace").splitlines():
        match = _CONN_RE.match(line)
        if not match:
            continue
        c_ip, c_port, b_ip, b_port, server, status, size = match.groups()
        backend = (b_ip, int(b_port)) if b_ip else None
        entries.append(ProxyLogEntry((c_ip, int(c_port)), backend, server, status, size))
    return entries
