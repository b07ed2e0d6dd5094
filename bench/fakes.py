"""An in-memory asyncio transport, for driving Ebb's HTTP/1.1 proxies without sockets.

The in-process benchmarks (`bench.hotpath`, `bench.observability`) and the unit tests of
the proxies' bookkeeping use it, so that what they time or check is the proxy's own Python
work and nothing of the kernel's.
"""

from __future__ import annotations


class MemoryTransport:
    """Records writes (all of them in `out` when `keep`, else only the `last`); reading
    and flow control are no-ops."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.out = bytearray()
        self.last = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.last = data
        if self.keep:
            self.out += data

    def writelines(self, items) -> None:
        self.write(b"".join(items))

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed
