"""The collectors behind the seeds' signatures that need no namespace: the proxy log's
connect() errors and the TIME_WAIT rescheduling arithmetic."""

from __future__ import annotations

from chaos.collect.proxylog import ProxyLogErrors
from chaos.collect.timewait import rescheduled

NGINX_99 = (
    b"2026/12/05 12:00:01 [crit] 12#12: *40 connect() to 198.18.3.2:8080 failed "
    b"(99: Cannot assign requested address) while connecting to upstream, client: "
    b"198.18.1.10, server: , request: \"GET / HTTP/1.1\"\n"
)
NGINX_111 = b"2026/12/05 12:00:02 [error] 12#12: *41 connect() failed (111: Connection refused)\n"


def test_proxy_log_counts_connect_errors_by_errno_and_waits_for_whole_lines(tmp_path):
    log = tmp_path / "proxy.log"
    collector = ProxyLogErrors(log, netns="ns", tags={"role": "proxy"})
    [first] = collector.sample(1.0)  # no log yet: a zero, not a missing series
    assert first.fields == {"connect_failed": 0}
    assert first.tags == {"netns": "ns", "role": "proxy"}
    log.write_bytes(b"CONN 198.18.1.10:1 - 198.18.3.2:8080 200 10 0.001\n" + NGINX_99 * 2
                    + NGINX_111 + NGINX_99[:30])
    [second] = collector.sample(2.0)
    assert second.fields == {
        "connect_failed": 3,
        "connect_failed_EADDRNOTAVAIL": 2,
        "connect_failed_ECONNREFUSED": 1,
    }
    with log.open("ab") as fh:
        fh.write(NGINX_99[30:])
    [third] = collector.sample(3.0)
    assert third.fields["connect_failed_EADDRNOTAVAIL"] == 3


def test_a_time_wait_timer_pushed_back_counts_once_and_a_running_one_never():
    before = {b"running": 50_000, b"pushed": 20_000, b"gone": 10_000}
    after = {b"running": 47_900, b"pushed": 59_800, b"new": 60_000}
    assert rescheduled(before, after, elapsed_ms=2000) == 1
    # timer jitter below the slack is not a reschedule
    assert rescheduled({b"a": 30_000}, {b"a": 29_500}, elapsed_ms=1000) == 0
