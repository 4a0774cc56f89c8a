"""The lab: client, gateway, proxy and origin in network namespaces on one host.

:mod:`.topology` plans and builds the namespaces, links, routes and nft rules (and keeps the
lab's state file); :mod:`.proxies` renders and runs the proxy under test; :mod:`.origin` is
the origin server (run as ``python -m chaos.lab.origin``, stdlib only, so nothing is
imported here), :mod:`.origin_config` its configuration and :mod:`.origin_log` the readers
of its stats and access log; :mod:`.lab` brings a lab up and down; :mod:`.view` shows it
in the terminal.
"""

__all__ = ["lab", "origin", "origin_config", "origin_log", "proxies", "topology", "view"]
