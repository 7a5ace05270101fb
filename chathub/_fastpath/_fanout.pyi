"""Encode-once fan-out with write batching (corking); see _fanout.pyx."""

from asyncio import AbstractEventLoop
from typing import Any, Callable, Final, Iterable

from picows import WSListener, WSTransport
from typing_extensions import disjoint_base

__all__ = [
    "CLOSE_TIMEOUT", "CORK_CAP", "DEFLATE_THRESHOLD", "EPHEMERAL", "MAX_QUEUED_BYTES", "MESSAGE",
    "Fanout", "FanoutListener", "broadcast",
]

MESSAGE: Final[int]
EPHEMERAL: Final[int]
CORK_CAP: Final[int]
MAX_QUEUED_BYTES: Final[int]
CLOSE_TIMEOUT: Final[float]
DEFLATE_THRESHOLD: Final[int]
CLOSE_TRY_AGAIN: Final[int]
SLOW_CONSUMER: Final[str]

@disjoint_base
class Fanout:
    @property
    def max_queue_frames(self) -> int: ...
    @property
    def max_queue_bytes(self) -> int: ...
    @property
    def cork_cap(self) -> int: ...
    @property
    def close_timeout(self) -> float: ...
    @property
    def loop(self) -> AbstractEventLoop | Any | None: ...
    @property
    def corked(self) -> int: ...
    @property
    def batched(self) -> int:
        """Frames a broadcast appended to an open batch (compiled module only)."""
    def __init__(
        self,
        max_queue_frames: int = 1000,
        max_queue_bytes: int = ...,
        cork_cap: int = ...,
        close_timeout: float = ...,
        loop: AbstractEventLoop | Any | None = None,
    ) -> None: ...
    def flush(self) -> None: ...

@disjoint_base
class FanoutListener(WSListener):
    transport: WSTransport | None
    closing: bool
    deflate: bool
    @property
    def paused(self) -> bool: ...
    @property
    def direct(self) -> bool: ...
    @property
    def fanout(self) -> Fanout: ...
    @property
    def queued_bytes(self) -> int: ...
    @property
    def shed(self) -> int: ...
    @property
    def queued_frames(self) -> int: ...
    @property
    def corked_bytes(self) -> int: ...
    def __init__(self, fanout: Fanout) -> None: ...
    def attach(self, transport: WSTransport | None) -> None: ...
    def send_text(self, payload: bytes, kind: int = ...) -> None: ...
    def send_binary(self, payload: bytes, kind: int = ...) -> None: ...
    def send_frame(self, frame: bytes, kind: int = ...) -> None: ...
    def flush(self) -> None: ...
    def close(self, code: int, reason: str, abort: bool = False) -> None: ...
    def release(self) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

def broadcast(
    conns: Iterable[Any],
    payload: bytes,
    kind: int = ...,
    gzip_threshold: int = 1024,
    compress: Callable[[bytes], bytes] | None = None,
    deflate: Callable[[bytes], bytes] | None = None,
    deflate_threshold: int = ...,
    exclude: Any = None,
) -> int: ...
