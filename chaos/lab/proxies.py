"""The proxy under test: HAProxy (default), nginx, Caddy, or an external proxy of the user's.

Each kind has a Jinja2 template (``chaos/lab/templates``) rendered from the scenario's
:class:`ProxySpec`, or takes the user's own file (``lab.proxy.config``). Either way the text
holds placeholders that only the lab can fill, and which it fills the same way in both:

    {{ listen }}    HOST:PORT the proxy listens on ({{ listen_host }}, {{ listen_port }})
    {{ origin }}    HOST:PORT of the origin it forwards to ({{ origin_host }}, {{ origin_port }})
    {{ run_dir }}   the proxy's own directory in the run (pid files, temp paths)
    {{ tls_cert }}, {{ tls_key }}, {{ tls_pem }} (both in one file), {{ tls_ca }}: a certificate
                    for the listen address from a CA made for the run (made when named)
    {{ origin_ca }} the CA that signed the origin's certificate (``lab.origin.tls``): the
                    run's one CA, the same file as {{ tls_ca }}

With ``lab.origin.tls`` the generated http-mode configurations speak TLS upstream and verify
the origin's certificate against the run's CA (HAProxy ``ssl verify required ca-file``, nginx
``proxy_ssl_verify`` with the upstream's name ``origin``, which the certificate carries
besides the origin's address; Caddy ``tls_trusted_ca_certs``).

Nothing else in a user's file is changed: line numbers stay the user's, so the proxy's own
checker (run in the proxy namespace before anything starts) names the user's line. The filled
file goes to ``<run>/proxy/``; the proxy runs in the foreground in the proxy namespace with its
log in ``<run>/logs/proxy.log`` (capped on disk: :mod:`chaos.record.logcap`). The generated
configurations log each connection (tcp mode) or request (http mode) on one line that starts
with ``CONN`` (Caddy: its JSON access log), so tests and the report can compare what the proxy
passed with what the origin received::

    CONN <client ip:port> <backend source ip:port | -> <server ip:port> <status> <bytes> ...

and, with ``tls``, end in ``TLS <protocol> <resumed>`` (HAProxy ``%sslv
%[ssl_fc_is_resumed]``: 1/0; nginx ``$ssl_protocol $ssl_session_reused``: r/.): the proxy's
own account of every handshake.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

import jinja2

from chaos.errors import CapabilityError, LabError, ProcessStartError
from chaos.kernel import netns, processes
from chaos.kernel.processes import ProcessRecord
from chaos.lab import certs
from chaos.record import logcap
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


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("chaos.lab", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # proxy configurations, not HTML
)
_TEMPLATES.filters.update(ms=_ms, whole_seconds=_whole_seconds)

PLACEHOLDERS = (
    "listen", "listen_host", "listen_port", "origin", "origin_host", "origin_port", "run_dir",
    "tls_cert", "tls_key", "tls_pem", "tls_ca", "origin_ca",
)  # fmt: skip
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class Endpoints:
    listen_host: str
    listen_port: int
    origin_host: str
    origin_port: int
    origin_tls: bool = False  # the origin speaks TLS (lab.origin.tls)

    def placeholders(self, run_dir: Path) -> dict[str, str]:
        return {
            "listen": f"{self.listen_host}:{self.listen_port}",
            "listen_host": self.listen_host,
            "listen_port": str(self.listen_port),
            "origin": f"{self.origin_host}:{self.origin_port}",
            "origin_host": self.origin_host,
            "origin_port": str(self.origin_port),
            "run_dir": str(run_dir),
        }


def fill_placeholders(text: str, values: dict[str, str], source: str) -> str:
    """``text`` with every ``{{ name }}`` replaced; an unknown name is the user's error."""
    unknown = [
        f"{source}:{text.count(chr(10), 0, m.start()) + 1}: {{{{ {m.group(1)} }}}}"
        for m in _PLACEHOLDER_RE.finditer(text)
        if m.group(1) not in values
    ]
    if unknown:
        raise LabError(
            "unknown placeholder in the proxy configuration:\n  " + "\n  ".join(unknown),
            "the lab fills only " + ", ".join(f"{{{{ {n} }}}}" for n in values),
        )
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)


def placeholders_used(text: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER_RE.finditer(text)}


class Proxy(ABC):
    """One kind of proxy under test."""

    kind: str
    binary: str
    package: str
    template: str  # in chaos/lab/templates; also the name of the filled file in the run
    #: a regular expression that finds, in a configuration's text, a log line chaos can parse
    parseable_log: str
    #: lines of the checker's output that say nothing about the configuration
    check_noise = re.compile(r"\[NOTICE\]")

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
    def check_argv(self, conf: Path) -> list[str]: ...

    @abstractmethod
    def run_argv(self, conf: Path) -> list[str]: ...

    def env(self) -> dict[str, str] | None:
        """The proxy's environment (None: the controller's)."""
        return None

    def example(self) -> str:
        """The generated configuration with its placeholders unfilled: a user's starting point."""
        placeholders = {name: f"{{{{ {name} }}}}" for name in PLACEHOLDERS}
        return _TEMPLATES.get_template(f"{self.template}.j2").render(
            spec=self.spec,
            origin_tls=self.endpoints.origin_tls,
            t=self.spec.timeouts,
            stream_module=NGINX_STREAM_MODULE,
            **placeholders,
        )

    @property
    def user_config(self) -> Path | None:
        return Path(self.spec.config) if self.spec.config else None

    def source_text(self) -> str:
        """The unfilled configuration: the user's file, or the generated example."""
        if self.user_config is None:
            return self.example()
        try:
            return self.user_config.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise LabError(
                f"cannot read the proxy configuration {self.user_config}: {exc}",
                "lab.proxy.config (or --proxy-config) must name a readable text file",
            ) from None

    def render(self) -> str:
        """The configuration file's text, placeholders filled."""
        source = str(self.user_config or f"generated {self.template}")
        return fill_placeholders(
            self.source_text(), self.placeholders(), source
        )

    @property
    def tls_files(self) -> certs.TlsFiles:
        return proxy_tls_files(self.conf_dir)

    def placeholders(self) -> dict[str, str]:
        tls = self.tls_files.placeholders()
        return {**self.endpoints.placeholders(self.conf_dir), **tls, "origin_ca": tls["tls_ca"]}

    def needs_tls(self) -> bool:
        """The generated config with ``tls``, or a user's that names a certificate."""
        named = placeholders_used(self.source_text())
        return self.spec.tls or any(n.startswith("tls_") or n == "origin_ca" for n in named)

    def check_user_config(self) -> list[str]:
        """Problems of a user's file that need no proxy to find; notes, not errors, are
        returned (e.g. no log line chaos can parse)."""
        if self.user_config is None:
            return []
        text = self.source_text()
        missing = {"listen", "origin"} - {
            name.split("_")[0]
            for name in placeholders_used(text)
            if name not in ("run_dir", "origin_ca")
        }
        if missing:
            names = " and no ".join(f"{{{{ {m} }}}}" for m in sorted(missing))
            raise LabError(
                f"{self.user_config} has no {names} placeholder: the lab owns the listen and "
                "origin addresses",
                f"write e.g. `{self.listen_example()}` where your proxy listens and "
                f"`{self.origin_example()}` where it forwards "
                "(`chaos lab proxy-config SCENARIO` prints a complete example)",
            )
        fill_placeholders(text, self.placeholders(), str(self.user_config))
        if re.search(self.parseable_log, text) is None:
            return [
                f"{self.user_config} has no log line chaos can parse, so the run will not count "
                f"what the proxy passed (CPU and memory are still measured); to count it, add "
                f"{self.log_hint()}"
            ]
        return []

    @abstractmethod
    def listen_example(self) -> str: ...

    @abstractmethod
    def origin_example(self) -> str: ...

    @abstractmethod
    def log_hint(self) -> str: ...

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / self.template

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
        if self.needs_tls():  # a CA and a certificate for this run's listen address
            certs.make(self.tls_files.ca.parent, self.endpoints.listen_host)
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
            env=self.env(),
        )
        output, _ = proc.communicate()
        if proc.returncode == 0:
            return
        said = "\n".join(
            line for line in output.strip().splitlines() if not self.check_noise.search(line)
        )
        if self.user_config is not None:
            # the filled file has the user's line numbers: name the user's file
            raise LabError(
                f"{self.kind} rejected your configuration {self.user_config}:\n"
                + said.replace(str(conf), str(self.user_config)),
                f"fix the line {self.kind} names above (the lab fills only the placeholders, "
                f"line numbers are your file's); the filled file is {conf}",
            )
        raise ProcessStartError(
            f"{self.kind} rejected its generated configuration {conf}:\n" + said,
            "this is a bug if the scenario is valid; please report it with the file above",
        )

    def start(
        self,
        namespace: str,
        log_path: Path,
        tied: bool = False,
        log_cap: int = logcap.DEFAULT_CAP,
    ) -> tuple[subprocess.Popen, ProcessRecord]:
        """``tied``: the proxy dies with this process (see :func:`processes.spawn`);
        ``log_cap``: bytes its log may use on disk."""
        conf = self.write_config(namespace)
        proc, record = processes.spawn(
            "proxy",
            self.kind,
            namespace,
            self.run_argv(conf),
            log_path,
            tied=tied,
            env=self.env(),
            log_cap=log_cap,
        )
        processes.wait_listening(
            proc, record, self.endpoints.listen_host, self.endpoints.listen_port
        )
        return proc, record


class HAProxy(Proxy):
    kind = "haproxy"
    binary = "haproxy"
    package = "haproxy"
    template = "haproxy.cfg"
    parseable_log = r'log-format\s+"?CONN '

    @classmethod
    def version_args(cls) -> list[str]:
        return ["-v"]

    def check_argv(self, conf: Path) -> list[str]:
        return [self.executable(), "-c", "-f", str(conf)]  # -q would hide the errors too

    def run_argv(self, conf: Path) -> list[str]:
        # master-worker (-W): a reload (SIGUSR2 to the master) starts a new worker while the
        # old one drains, as `systemctl reload haproxy` does; -db keeps it in the foreground
        return [self.executable(), "-W", "-db", "-f", str(conf)]

    def listen_example(self) -> str:
        return "bind {{ listen }}"

    def origin_example(self) -> str:
        return "server origin {{ origin }}"

    def log_hint(self) -> str:
        return (
            '`log stdout format raw local0` in global and `log global` plus '
            '`log-format "CONN %ci:%cp %bi:%bp %si:%sp %ST %B %ts %Tt"` in defaults'
        )


class Nginx(Proxy):
    kind = "nginx"
    binary = "nginx"
    package = "nginx-light libnginx-mod-stream"
    template = "nginx.conf"
    parseable_log = r"log_format\s+\S+\s+'CONN "

    @classmethod
    def version_args(cls) -> list[str]:
        return ["-v"]

    def example(self) -> str:
        if self.spec.mode == "tcp" and not Path(NGINX_STREAM_MODULE).exists():
            raise CapabilityError(
                "nginx's stream module is missing, and the scenario uses nginx in tcp mode",
                "install it: apt-get install libnginx-mod-stream",
            )
        return super().example()

    def _base_argv(self, conf: Path) -> list[str]:
        # -e: nginx opens its default error log before reading the config; keep it in the run.
        argv = [self.executable(), "-p", str(self.conf_dir), "-e", "stderr", "-c", str(conf)]
        # a user's file may leave out what the lab needs: the foreground, a pid file of its own
        text = self.source_text()
        needed = {"daemon": "off", "pid": f"{self.conf_dir}/nginx.pid"}
        globals_ = [
            f"{directive} {value};"
            for directive, value in needed.items()
            if re.search(rf"^\s*{directive}\s", text, re.MULTILINE) is None
        ]
        return [*argv, "-g", " ".join(globals_)] if globals_ else argv

    def check_argv(self, conf: Path) -> list[str]:
        return [*self._base_argv(conf), "-t", "-q"]

    def run_argv(self, conf: Path) -> list[str]:
        return self._base_argv(conf)

    def listen_example(self) -> str:
        return "listen {{ listen }};"

    def origin_example(self) -> str:
        return "proxy_pass http://{{ origin }};"

    def log_hint(self) -> str:
        return (
            "log_format chaos 'CONN $remote_addr:$remote_port - $upstream_addr $status "
            "$bytes_sent $request_time'; access_log /dev/stdout chaos;"
        )


class Caddy(Proxy):
    """Caddy 2.6 from Debian: HTTP only (its TCP proxy, layer4, is a plugin Debian lacks)."""

    kind = "caddy"
    binary = "caddy"
    package = "caddy"
    template = "Caddyfile"
    parseable_log = r"(?s)\blog\b.*output\s+(stdout|stderr)"
    check_noise = re.compile(r'^\{"level":"(debug|info|warn)"')

    @classmethod
    def version_args(cls) -> list[str]:
        return ["version"]

    def env(self) -> dict[str, str]:
        # Caddy keeps certificates and autosaved config under XDG dirs: keep them in the run;
        # GOMAXPROCS is Caddy's thread count.
        return {
            **os.environ,
            "XDG_DATA_HOME": str(self.conf_dir / "data"),
            "XDG_CONFIG_HOME": str(self.conf_dir / "config"),
            "HOME": str(self.conf_dir),
            "GOMAXPROCS": str(self.spec.threads),
        }

    def check_argv(self, conf: Path) -> list[str]:
        return [self.executable(), "validate", "--config", str(conf), "--adapter", "caddyfile"]

    def run_argv(self, conf: Path) -> list[str]:
        return [self.executable(), "run", "--config", str(conf), "--adapter", "caddyfile"]

    def listen_example(self) -> str:
        return "http://{{ listen }} { bind {{ listen_host }} ... }"

    def origin_example(self) -> str:
        return "reverse_proxy {{ origin }}"

    def log_hint(self) -> str:
        return "`log { output stdout\n format json }` in the site block"


PROXIES: dict[str, type[Proxy]] = {"haproxy": HAProxy, "nginx": Nginx, "caddy": Caddy}


def proxy_tls_files(conf_dir: Path) -> certs.TlsFiles:
    """The proxy's certificate and the run's CA (``<run>/proxy/tls``)."""
    return certs.files_in(conf_dir / "tls")


def proxy_for(spec: ProxySpec, endpoints: Endpoints, conf_dir: Path) -> Proxy:
    """The proxy that the lab starts; ``external`` proxies are the user's to run."""
    return PROXIES[spec.kind](spec, endpoints, conf_dir)


# --- logs --------------------------------------------------------------------------------

_ADDR = r"(\S+):(\d+)"
_CONN_RE = re.compile(rf"^CONN {_ADDR} (?:{_ADDR}|-) (\S+) (\S+) (\S+)")
_TLS_RE = re.compile(r" TLS (\S+) (\S+)$")


@dataclass(frozen=True)
class ProxyLogEntry:
    client: tuple[str, int]
    backend_source: tuple[str, int] | None
    server: str
    status: str
    bytes: str
    tls: str | None = None  # the TLS protocol version, when the log says (see above)
    resumed: bool | None = None  # whether that TLS session was resumed


def _caddy_entry(line: str) -> ProxyLogEntry | None:
    """Caddy's JSON access log line ("handled request"), or None."""
    if '"handled request"' not in line:
        return None
    try:
        record = json.loads(line)
        request = record["request"]
        client = (str(request["remote_ip"]), int(request["remote_port"]))
    except (ValueError, KeyError, TypeError):
        return None
    return ProxyLogEntry(client, None, "-", str(record.get("status", "-")), str(record.get("size")))


def parse_log(path: Path) -> list[ProxyLogEntry]:
    """The ``CONN`` lines of a proxy log, or Caddy's JSON access lines (other lines are the
    proxy's own messages), its rotated parts first. Lines the log's cap deleted are gone:
    see logcap.rotated_away."""
    entries = []
    text = "".join(Path(part).read_text(errors="replace") for part in logcap.log_parts(path))
    for line in text.splitlines():
        match = _CONN_RE.match(line)
        if not match:
            if (caddy := _caddy_entry(line)) is not None:
                entries.append(caddy)
            continue
        c_ip, c_port, b_ip, b_port, server, status, size = match.groups()
        backend = (b_ip, int(b_port)) if b_ip else None
        entry = ProxyLogEntry((c_ip, int(c_port)), backend, server, status, size)
        if tls := _TLS_RE.search(line):
            version, resumed = tls.groups()
            entry = replace(entry, tls=version, resumed=resumed in ("1", "r"))
        entries.append(entry)
    return entries
