"""Sysctl windows: set per-namespace ``net.*`` sysctls for a time, then restore them.

``{values: {net.ipv4.tcp_fin_timeout: 5, net.ipv4.tcp_rmem: [4096, 8192, 16384]}}``.
Keys are checked when the fault is validated — ``net.*`` only (others are not per
namespace and would change the host), present in the target's namespace, writable — and the
previous values are snapshotted into the handle (so into the ledger) before anything is
written. Revert writes the snapshot back, key by key, in reverse order; a key whose
namespace is gone needs nothing.

Windows stack per (namespace, key), across processes (the ledger is the source of truth):
a window that opens while another holds the key records the *original* value, not the
other's; a window that closes while others still hold the key leaves it at the newest
holder's value; the last one out restores the original, whatever the order.
"""

from __future__ import annotations

import os
from typing import ClassVar, cast

from pydantic import Field, field_validator

from chaos.errors import FaultError, SysctlError
from chaos.faults.base import Fault, Handle, HandleData, Params
from chaos.kernel import netns

SysctlValue = int | str | list[int]


class SysctlParams(Params):
    values: dict[str, SysctlValue] = Field(
        description="net.* sysctl → value (a list for vector sysctls like tcp_rmem)"
    )

    @field_validator("values")
    @classmethod
    def _keys(cls, value: dict[str, SysctlValue]) -> dict[str, SysctlValue]:
        if not value:
            raise ValueError("give at least one sysctl")
        for key in value:
            try:
                netns.check_sysctl_key(key)
            except SysctlError as exc:
                raise ValueError(exc.message) from None
        return value


class SysctlHandle(HandleData):
    """The namespace, the values written, and the values found before (all as the kernel
    prints them)."""

    netns: str
    values: dict[str, str]
    previous: dict[str, str]


def _holding(state: SysctlHandle, holders: list[SysctlHandle], key: str) -> list[SysctlHandle]:
    """The holders (oldest first) that set ``key`` in ``state``'s namespace."""
    return [h for h in holders if h.netns == state.netns and key in h.values]


def _writable(key: str) -> bool:
    return bool(os.stat(netns.sysctl_path(key)).st_mode & 0o200)


class SysctlWindow(Fault):
    kind = "sysctl"
    params_model = SysctlParams
    handle_model = SysctlHandle
    features: ClassVar[tuple[str, ...]] = ()
    params: SysctlParams
    stacks = True

    def check_target(self) -> None:
        namespace = self.target.netns
        if namespace is None:
            raise FaultError(
                f"fault sysctl on {self.target.name}: refusing to change the host's sysctls",
                "aim it at a role of the lab (client, gateway, proxy, origin)",
            )
        for key in self.params.values:
            try:
                netns.sysctl_get(namespace, key)
                if not netns.run_in(namespace, _writable, key):
                    raise SysctlError(f"sysctl {key!r} is read-only", "choose a writable sysctl")
            except SysctlError as exc:
                raise FaultError(
                    f"fault sysctl on {self.target.name}: {exc.message}", exc.hint
                ) from None

    def prepare(self) -> Handle:
        namespace = self.target.netns
        previous = {key: netns.sysctl_get(namespace, key) for key in self.params.values}
        wanted = {k: netns.normalize_sysctl_value(v) for k, v in self.params.values.items()}
        assert namespace is not None  # check_target refused the host
        return self.handle(SysctlHandle(netns=namespace, values=wanted, previous=previous))

    def apply(self, handle: Handle) -> None:
        state = SysctlHandle.of(handle)
        for key, value in state.values.items():
            try:
                netns.sysctl_set(state.netns, key, value)
            except SysctlError as exc:
                raise FaultError(
                    f"fault sysctl on {handle.target}: {exc.message}", exc.hint
                ) from None

    @classmethod
    def overlap_keys(cls, params: Params) -> set[str]:
        return set(cast(SysctlParams, params).values)

    def stack_on(self, handle: Handle, holders: list[Handle]) -> None:
        state = SysctlHandle.of(handle)
        held = [SysctlHandle.of(h) for h in holders]
        for key in state.previous:
            older = _holding(state, held, key)
            if older:
                state.previous[key] = older[0].previous[key]  # the original, from the first
        state.store(handle)

    @classmethod
    def revert(cls, handle: Handle) -> None:
        cls.revert_stacked(handle, [])

    @classmethod
    def revert_stacked(cls, handle: Handle, holders: list[Handle]) -> None:
        state = SysctlHandle.of(handle)
        namespace = state.netns
        if not netns.exists(namespace):
            return  # the sysctls died with their namespace
        held = [SysctlHandle.of(h) for h in holders]
        failed = []
        for key, original in reversed(state.previous.items()):
            still = _holding(state, held, key)
            value = still[-1].values[key] if still else original
            try:
                if netns.sysctl_get(namespace, key) != value:
                    netns.sysctl_set(namespace, key, value)
            except SysctlError as exc:
                failed.append(exc.message)
        if failed:
            raise FaultError(
                f"restoring sysctls in {namespace} failed: {'; '.join(failed)}",
                "run `chaos revert-all` to retry",
            )
