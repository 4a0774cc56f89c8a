"""The remote agent: faults applied on another host (``chaos agent``) on a controller's behalf.

:mod:`.client` is the controller's side, a fault type of its own (``RemoteFault``, kind
``remote``) with its HTTP client and lease keeper; :mod:`.service` is the agent's logic: its
allow-list, the faults it holds under leases through the same guard and ledger as a local
run, and its endpoints; :mod:`.server` is the HTTP plumbing those endpoints are served by
(TLS, the token check, body and connection limits).
"""

__all__ = ["client", "server", "service"]
