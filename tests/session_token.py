"""The token that marks everything this test session makes (namespaces, labs, processes).

Other test sessions and real labs may share the host; the session guard in ``conftest.py``
counts only what carries this token. Every namespace a test creates has it in its name.
"""

from __future__ import annotations

import os

TOKEN = f"t{os.getpid() % 100000}x"
# inherited by every process the session starts (also those reparented after a kill)
ENV_VAR = "CHAOS_TEST_SESSION"
