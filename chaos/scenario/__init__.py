"""Scenarios: the model (:mod:`.model`, frozen pydantic), the value language of expectations
(:mod:`.expression`), the loader (:mod:`.loader`: YAML with line numbers, every fault checked
offline) and the built-in scenarios (``builtin/``, package data)."""

__all__ = ["expression", "loader", "model"]
