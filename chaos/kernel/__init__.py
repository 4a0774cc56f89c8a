"""The kernel layer: everything that talks to Linux directly, and nothing above it.

Network namespaces and the nft runner (:mod:`.netns`, the one gateway into a namespace),
processes started and stopped inside them (:mod:`.processes`), process trees and cgroups
from ``/proc`` (:mod:`.proctree`), handles on a namespace's ``/proc`` files
(:mod:`.nsref`), sock_diag (:mod:`.sockdiag`) and the netfilter netlink family
(:mod:`.nfnetlink`). Nothing here imports the lab, the faults or the collectors.
"""

__all__ = ["netns", "nfnetlink", "nsref", "processes", "proctree", "sockdiag"]
