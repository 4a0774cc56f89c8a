"""A certificate authority made for one lab, and the certificates it signs (the proxy's, the
origin's), with the openssl command line: nothing is trusted beyond the run, and nothing
outlives it but files in the run directory.

    <ca dir>/ca.crt    the run's CA (give it to clients: ``ssl.create_default_context(cafile=)``),
                       <run>/proxy/tls/ for the lab: one CA for both legs
    <dir>/server.crt   a server's certificate, for its lab address (subjectAltName IP)
    <dir>/server.key   its key (P-256)
    <dir>/server.pem   certificate and key in one file (HAProxy's ``crt``)
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from chaos.errors import CapabilityError, LabError

DAYS = "2"  # a run's certificates need not outlive it
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    pem: Path

    def placeholders(self) -> dict[str, str]:
        return {
            "tls_ca": str(self.ca),
            "tls_cert": str(self.cert),
            "tls_key": str(self.key),
            "tls_pem": str(self.pem),
        }


def files_in(directory: Path) -> TlsFiles:
    return TlsFiles(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "server.pem",
    )


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CapabilityError("openssl is not installed: the lab makes its certificates with it",
                              "install it: apt-get install openssl")
    done = subprocess.run([exe, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def make(
    directory: Path, address: str, ca_dir: Path | None = None, names: tuple[str, ...] = ()
) -> TlsFiles:
    """A certificate for ``address`` (an IP address of the lab) and DNS ``names``, signed by
    the CA in ``ca_dir`` (default ``directory``), which is made there if it is not yet."""
    ca_dir = ca_dir or directory
    files = replace(files_in(directory), ca=ca_dir / "ca.crt")
    directory.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ca_dir / "ca.key"
    if not ca_key.exists():
        _openssl("req", "-x509", *CURVE, "-keyout", str(ca_key), "-out", str(files.ca),
                 "-days", DAYS, "-subj", "/CN=chaos run CA")  # fmt: skip
    csr = directory / "server.csr"
    _openssl("req", *CURVE, "-keyout", str(files.key), "-out", str(csr),
             "-subj", f"/CN={address}")  # fmt: skip
    extensions = directory / "server.ext"
    alt_names = ", ".join([f"IP:{address}", *(f"DNS:{name}" for name in names)])
    extensions.write_text(f"subjectAltName = {alt_names}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(files.cert), "-days", DAYS,
             "-extfile", str(extensions))  # fmt: skip
    files.pem.write_text(files.cert.read_text() + files.key.read_text())
    return files
