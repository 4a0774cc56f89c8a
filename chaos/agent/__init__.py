"""The remote agent: faults applied on another host (``chaos agent``) on a controller's behalf.

:mod:`.client` is the controller's side, a fault type of its own (``RemoteFault``, kind
``remote``) with its HTTP client and lease keeper; :mod:`.service` is the agent: the HTTP
service that validates and applies faults through the same guard and ledger as a local run.
"""

__all__ = ["client", "service"]
