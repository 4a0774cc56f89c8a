"""Where InfluxDB is: URL, org, bucket and token, from flags, the scenario or the environment.

Precedence, field by field: command-line flag, then the scenario's ``sink.influxdb``, then
the standard ``INFLUXDB_V2_URL`` / ``_ORG`` / ``_BUCKET`` variables. The token is never in a
scenario file: it comes from a flag (``chaos push --token``) or from the environment variable
named by ``sink.influxdb.token_env`` (default ``INFLUXDB_V2_TOKEN``). InfluxDB is configured
as soon as a URL is known from any source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from chaos.errors import SinkError
from chaos.scenario.model import InfluxSpec

DEFAULT_TOKEN_ENV = "INFLUXDB_V2_TOKEN"


@dataclass(frozen=True)
class InfluxConfig:
    url: str
    org: str
    bucket: str
    token: str | None = None

    def describe(self) -> str:
        """Where points go, for messages (never the token)."""
        return f"{self.url} (org {self.org}, bucket {self.bucket})"


@dataclass(frozen=True)
class InfluxFlags:
    """What the command line said; ``None`` means "not given"."""

    url: str | None = None
    org: str | None = None
    bucket: str | None = None
    token: str | None = None
    disabled: bool = False


def resolve_influx(
    spec: InfluxSpec | None,
    flags: InfluxFlags = InfluxFlags(),  # frozen: a safe default
    env: Mapping[str, str] | None = None,
) -> InfluxConfig | None:
    """The InfluxDB to write to, or ``None`` when none is configured (or ``--no-influx``).

    Raises :class:`SinkError` for a configuration that names InfluxDB but cannot work: no URL
    although the scenario has a ``sink.influxdb`` section, a URL that is not http(s), or a
    missing org or bucket.
    """
    if flags.disabled:
        return None
    env = os.environ if env is None else env
    spec_url, spec_org, spec_bucket = (spec.url, spec.org, spec.bucket) if spec else (None,) * 3
    url = flags.url or spec_url or env.get("INFLUXDB_V2_URL")
    if not url:
        if spec is not None:
            raise SinkError(
                "the scenario has a sink.influxdb section but no InfluxDB URL",
                "set sink.influxdb.url, pass --influx-url or export INFLUXDB_V2_URL",
            )
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SinkError(
            f"InfluxDB URL {url!r} is not an http:// or https:// URL",
            "give the server's base URL, e.g. http://localhost:8086",
        )
    org = flags.org or spec_org or env.get("INFLUXDB_V2_ORG")
    bucket = flags.bucket or spec_bucket or env.get("INFLUXDB_V2_BUCKET")
    missing = [name for name, value in (("org", org), ("bucket", bucket)) if not value]
    if missing:
        what = " and ".join(missing)
        raise SinkError(
            f"InfluxDB at {url} is configured without {what}",
            "set sink.influxdb.org/bucket, pass --influx-org/--influx-bucket, or export "
            "INFLUXDB_V2_ORG/INFLUXDB_V2_BUCKET",
        )
    token_env = spec.token_env if spec else DEFAULT_TOKEN_ENV
    token = flags.token or env.get(token_env) or None
    return InfluxConfig(url=url.rstrip("/"), org=str(org), bucket=str(bucket), token=token)
