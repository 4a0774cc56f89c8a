"""A stand-in for a container engine's CLI (``docker``), for ``chaos collect --container``.

No container engine runs on these machines (only Docker's client is installed), so tests put
this script first on PATH: it checks that it was asked ``inspect --type container --format
{{.State.Pid}} NAME`` exactly, then answers as ``docker inspect`` would.
"""

from __future__ import annotations

import stat
from pathlib import Path


def docker_stand_in(bin_dir: Path, name: str, stdout: str, code: int = 0) -> Path:
    """Write ``bin_dir/docker``: prints ``stdout`` (to stderr when ``code`` is not 0)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "docker"
    argv = f"inspect --type container --format {{{{.State.Pid}}}} {name}"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$*" = "{argv}" ] || {{ echo "unexpected argv: $*" >&2; exit 99; }}\n'
        f"echo '{stdout}' >&{2 if code else 1}\n"
        f"exit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script
