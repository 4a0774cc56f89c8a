"""netem tests need a kernel with sch_netem. This host's kernel has none, so they run inside
the QEMU VM that ``tests/vm/test_netem_vm.py`` boots once per session (it sets
``CHAOS_IN_VM=1``). On a host whose kernel has netem, run them directly with
``CHAOS_NETEM_DIRECT=1 .venv/bin/python -m pytest tests/vm_netem``.

Elsewhere they are not collected: the host-side runner reports each of them instead, so they
are never silently skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from netem_pair import A_IP, B_IP, Pair
from session_token import TOKEN

from chaos.kernel import netns

if not (os.environ.get("CHAOS_IN_VM") or os.environ.get("CHAOS_NETEM_DIRECT")):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    prefix = f"cvm-{TOKEN}"
    made = Pair(f"{prefix}-a", f"{prefix}-b")
    netns.create(made.a)
    try:
        netns.create(made.b)
        with netns.ipr(made.a) as ipr:
            ipr.link(
                "add",
                ifname=made.link,
                kind="veth",
                peer={"ifname": made.link, "net_ns_fd": netns.path_of(made.b)},
            )
        for ns, address in ((made.a, A_IP), (made.b, B_IP)):
            with netns.ipr(ns) as ipr:
                for name in ("lo", made.link):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                index = ipr.link_lookup(ifname=made.link)[0]
                ipr.addr("add", index=index, address=address, prefixlen=30)
        yield made
    finally:
        netns.remove(made.a)
        netns.remove(made.b)
