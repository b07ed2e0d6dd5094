"""Which instances of a revision the activator may send to, and which it must probe (pure).

The controller lists each revision's instance addresses as ready or not ready. The
activator does not wait for the controller to notice readiness: it probes not-ready
addresses itself and uses one the moment its probe passes. An address is usable when

    (listed ready by the controller  or  passed the activator's probe)  and not failed

where `failed` marks an address a connection to which was refused; it stays out until a
probe passes again. Every listed address that is not usable is probed. A ready address
that the controller moves back to not-ready must pass a probe again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class _State:
    __slots__ = ("ready", "probed", "failed")

    def __init__(self) -> None:
        self.ready = False  # listed ready by the controller
        self.probed = False  # passed the activator's probe since last listed not-ready
        self.failed = False  # a connection failed; out until a probe passes

    @property
    def usable(self) -> bool:
        return (self.ready or self.probed) and not self.failed


class AddressBook:
    """The addresses of one revision's instances and what is known of each."""

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}

    def update(self, ready: Iterable[str], not_ready: Iterable[str]) -> None:
        """The controller's current lists; addresses in neither are forgotten."""
        old = self._states
        new: dict[str, _State] = {}
        for address in ready:
            state = old.get(address) or _State()
            state.ready = True
            new[address] = state
        for address in not_ready:
            if address in new:  # listed both ways: ready wins
                continue
            state = old.get(address) or _State()
            if state.ready:  # was ready, is not any more: trust only a new probe
                state.probed = False
            state.ready = False
            new[address] = state
        self._states = new

    def probe_result(self, address: str, ok: bool) -> None:
        state = self._states.get(address)
        if state is not None and ok:
            state.probed = True
            state.failed = False

    def connect_failed(self, address: str) -> None:
        state = self._states.get(address)
        if state is not None:
            state.failed = True
            state.probed = False

    def usable(self) -> list[str]:
        """Usable addresses, in the controller's order (ready ones first)."""
        return [address for address, state in self._states.items() if state.usable]

    def needs_probe(self, address: str) -> bool:
        state = self._states.get(address)
        return state is not None and not state.usable

    def to_probe(self) -> list[str]:
        return [address for address, state in self._states.items() if not state.usable]

    def __contains__(self, address: object) -> bool:
        return address in self._states

    def __iter__(self) -> Iterator[str]:
        """Every listed address, ready or not."""
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)
