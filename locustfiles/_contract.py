"""Where the locustfiles find the load contract and the series format: the stdlib-only modules
``chaos.load.contract`` and ``chaos.load.series`` (plus ``hdrh``) of the chaos package, which
the locustfiles share with the controller. A checkout whose package is not installed works
too: the package is then imported from the directory above this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from chaos.load import contract, series
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from chaos.load import contract, series

__all__ = ["contract", "register_options", "series"]


def register_options(parser: object, options: dict[str, contract.Option]) -> None:
    """Add ``options`` to Locust's parser, on the parser itself: only arguments added there
    (not in an argument group) appear in the web UI's form."""
    for option in options.values():
        parser.add_argument(option.flag, **option.argparse_kwargs())  # type: ignore[attr-defined]
