"""Pure-Python twin of ``chathub._fastpath._fanout`` (encode-once fan-out with corking).

Same observable behaviour as the Cython module: the same bytes in the same writes to
every connection, the same order, the same slow-consumer policy and the same closes (the
tests drive both with one random script and compare). Where the compiled module writes
with picows' C-level ``WSTransport._fast_write``, this one writes to the transport's
``underlying_transport`` (picows' fast write is a ``send()`` on the same socket, falling
back to the same transport's ``write``). See the Cython module for the design.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Iterable, cast

from picows import WSCloseCode, WSListener, WSTransport

from chathub._fastpath._frame_py import encode_frame

__all__ = [
    "CLOSE_TIMEOUT", "CORK_CAP", "DEFLATE_THRESHOLD", "EPHEMERAL", "MAX_QUEUED_BYTES", "MESSAGE",
    "Fanout", "FanoutListener", "broadcast",
]

MESSAGE = 0
EPHEMERAL = 1
CORK_CAP = 64 * 1024
MAX_QUEUED_BYTES = 16 * 1024 * 1024
CLOSE_TIMEOUT = 2.0
DEFLATE_THRESHOLD = 256
CLOSE_TRY_AGAIN = 1013
SLOW_CONSUMER = "slow consumer: send queue overflowed; reconnect with since_seq"

_OP_TEXT = 0x1
_OP_BINARY = 0x2
_MIN_CORK_ALLOC = 4096

log = logging.getLogger("chathub.ws")


class Fanout:
    """Per-event-loop corking state and the slow-consumer limits, shared by the listeners.

    ``loop`` is the loop whose ``call_soon`` runs the end-of-iteration flush and whose
    ``call_later`` times a graceful close; None: the running loop, looked up when needed.
    A Fanout serves one event loop: a flush scheduled on a loop that stops before running
    it is not rescheduled elsewhere (call ``flush()`` by hand).
    """

    __slots__ = ("max_queue_frames", "max_queue_bytes", "cork_cap", "close_timeout", "loop",
                 "_dirty", "_scheduled_on")

    def __init__(self, max_queue_frames: int = 1000, max_queue_bytes: int = MAX_QUEUED_BYTES,
                 cork_cap: int = CORK_CAP, close_timeout: float = CLOSE_TIMEOUT, loop: Any = None) -> None:
        max_queue_frames, max_queue_bytes, cork_cap = int(max_queue_frames), int(max_queue_bytes), int(cork_cap)
        if max_queue_frames < 1 or max_queue_bytes < 1 or cork_cap < 1:
            raise ValueError("max_queue_frames, max_queue_bytes and cork_cap must be positive")
        self.max_queue_frames = max_queue_frames
        self.max_queue_bytes = max_queue_bytes
        self.cork_cap = cork_cap
        self.close_timeout = float(close_timeout)
        self.loop = loop
        self._dirty: list[FanoutListener] = []
        self._scheduled_on: Any = None

    @property
    def corked(self) -> int:
        """Number of listeners waiting for the end-of-iteration flush."""
        return len(self._dirty)

    def settle(self) -> None:
        """Nothing to do here: every broadcast is handed to its listeners at once (the
        compiled module defers some to the end of the iteration; see _fanout.pyx)."""

    def _get_loop(self) -> Any:
        return self.loop if self.loop is not None else asyncio.get_running_loop()

    def _mark(self, lst: FanoutListener) -> None:
        lst._dirty = True
        self._dirty.append(lst)
        if self._scheduled_on is None:  # the first in this iteration: one call_soon
            loop = self._get_loop()
            loop.call_soon(self.flush)
            self._scheduled_on = loop

    def flush(self) -> None:
        """Write every corked listener's frames (one write each). Runs once at the end of
        every loop iteration in which something was corked."""
        dirty = self._dirty
        self._dirty = []
        self._scheduled_on = None
        for lst in dirty:
            lst._dirty = False
            lst._flush()


class FanoutListener(WSListener):  # type: ignore[misc]
    """Send side of one WebSocket connection: cork, bounded queue, ordered close."""

    __slots__ = ("transport", "closing", "paused", "_dirty", "fanout", "_pending", "_cork",
                 "_queue", "queued_bytes", "shed", "deflate")

    def __init__(self, fanout: Fanout) -> None:
        if fanout is None or not isinstance(fanout, Fanout):
            raise TypeError(f"fanout must be a Fanout, not {type(fanout).__name__}")
        super().__init__()
        self.transport: WSTransport | None = None
        self.closing = False
        self.paused = False
        self._dirty = False
        self.fanout = fanout
        self._pending: bytes | None = None  # the only corked frame, by reference
        self._cork: bytearray | None = None  # two or more corked frames, copied
        self._queue: collections.deque[bytes] | None = None  # None or non-empty
        self.queued_bytes = 0
        self.shed = 0
        self.deflate = False  # permessage-deflate negotiated: broadcasts may send RSV1 frames

    # ---------------------------------------------------------------- introspection

    @property
    def queued_frames(self) -> int:
        return 0 if self._queue is None else len(self._queue)

    @property
    def corked_bytes(self) -> int:
        return self._corked_size()

    @property
    def direct(self) -> bool:
        """The compiled module's ``send()`` straight on the socket; never here: every
        write goes through the transport."""
        return False

    def attach(self, transport: WSTransport | None) -> None:
        """Take the connection's transport (from ``on_ws_connected``). The compiled
        module also trims picows' per-connection state that is dead after the handshake
        (upgrade request and response, most of the write buffer); Python cannot reach it,
        and nothing on the wire depends on it. Like the compiled module, it sets a plain
        TCP transport's write-buffer limits to 0, so that ``pause_writing`` means "the
        transport holds bytes" in both (when frames start to queue, when events are
        shed)."""
        self.transport = transport
        if transport is None or transport.is_secure:
            return
        tr = transport.underlying_transport
        try:
            sock = tr.get_extra_info("socket")
            if sock is None or sock.fileno() < 0:
                return
            tr.set_write_buffer_limits(0)
        except Exception:  # not a transport with flow control limits
            return

    # ---------------------------------------------------------------- send side

    def send_text(self, payload: bytes, kind: int = MESSAGE) -> None:
        """Queue ``payload`` as one text frame (order kept with everything else sent here)."""
        self._put(encode_frame(_OP_TEXT, _check_bytes(payload, "payload")), kind)

    def send_binary(self, payload: bytes, kind: int = MESSAGE) -> None:
        """Queue ``payload`` as one binary frame."""
        self._put(encode_frame(_OP_BINARY, _check_bytes(payload, "payload")), kind)

    def send_frame(self, frame: bytes, kind: int = MESSAGE) -> None:
        """Queue an already encoded frame (header + payload)."""
        self._put(_check_bytes(frame, "frame"), kind)

    def flush(self) -> None:
        """Write this connection's cork now (one write)."""
        self._flush()

    def close(self, code: int, reason: str, abort: bool = False) -> None:
        """Close with ``code``: the cork first, then the close frame; queued frames are
        dropped. ``abort`` drops the cork too and resets the connection."""
        t = self.transport
        if self.closing or t is None:
            return
        if not abort:
            self._flush()
            if self.closing:
                return
        self.closing = True
        self._release()
        try:
            t.send_close(cast(WSCloseCode, code), reason.encode()[:120])  # any code, 4001 too
        finally:
            # a slow consumer is reset at the deadline (its buffer may never drain); it
            # still gets the close frame if it reads within close_timeout
            self.fanout._get_loop().call_later(self.fanout.close_timeout, t.disconnect, not abort)

    def release(self) -> None:
        """The connection is gone: drop everything held for it (no write)."""
        self.closing = True
        self._release()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        """Write the cork, then the queue (coalesced up to ``cork_cap`` a write), until the
        transport pauses again."""
        cap = self.fanout.cork_cap
        self.paused = False
        if self.closing:
            return
        self._flush()
        q = self._queue
        while q is not None and not self.paused and not self.closing:
            frame = q[0]
            size = self._corked_size()
            if size and size + len(frame) > cap:
                self._flush()  # may pause: then the frame stays queued
                continue
            q.popleft()
            self.queued_bytes -= len(frame)
            if not q:
                self._queue = q = None
            self._append(frame)
            if self._corked_size() >= cap:
                self._flush()
        self._flush()

    # ---------------------------------------------------------------- internals

    def _corked_size(self) -> int:
        if self._pending is not None:
            return len(self._pending)
        return 0 if self._cork is None else len(self._cork)

    def _put(self, frame: bytes, kind: int) -> None:
        if self.closing or self.transport is None:
            return
        if self.paused or self._queue is not None:
            self._enqueue(frame, kind)
            return
        n = len(frame)
        cap = self.fanout.cork_cap
        size = self._corked_size()
        if size and size + n > cap:
            self._flush()
            if self.closing:
                return
            if self.paused:
                self._enqueue(frame, kind)
                return
        self._append(frame)
        if not self._dirty:
            self.fanout._mark(self)
        if self._corked_size() >= cap:
            self._flush()

    def _enqueue(self, frame: bytes, kind: int) -> None:
        n = len(frame)
        f = self.fanout
        q = self._queue
        if kind == EPHEMERAL:
            self.shed += 1
            return
        if (q is not None and len(q) >= f.max_queue_frames) or self.queued_bytes + n > f.max_queue_bytes:
            self.close(CLOSE_TRY_AGAIN, SLOW_CONSUMER, True)
            return
        if q is None:
            self._queue = q = collections.deque()
        q.append(frame)
        self.queued_bytes += n

    def _append(self, frame: bytes) -> None:
        if self._pending is None and self._cork is None:
            self._pending = frame
            return
        if self._cork is None:
            assert self._pending is not None
            self._cork = bytearray(self._pending)
            self._pending = None
        self._cork += frame

    def _flush(self) -> None:
        data: bytes | bytearray | None = self._pending
        if data is None:
            data = self._cork
            if data is None:
                return
        self._pending = None
        self._cork = None
        t = self.transport
        if self.closing or t is None or t.is_close_frame_sent or t.is_disconnected:
            return
        try:
            tr = t.underlying_transport
            if tr.is_closing():
                return  # closed under us (reset): the write must not happen
            tr.write(data)
        except Exception:
            log.warning("write to a WebSocket failed; dropping the connection", exc_info=True)
            self.closing = True
            self._release()
            try:
                t.disconnect(False)
            except Exception:
                pass

    def _release(self) -> None:
        self._pending = None
        self._cork = None
        self._queue = None
        self.queued_bytes = 0


def _check_bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def broadcast(conns: Iterable[Any], payload: bytes, kind: int = MESSAGE, gzip_threshold: int = 1024,
              compress: Callable[[bytes], bytes] | None = None,
              deflate: Callable[[bytes], bytes] | None = None,
              deflate_threshold: int = DEFLATE_THRESHOLD, exclude: Any = None) -> int:
    """Write ``payload`` to every connection of ``conns`` (hub ``Conn``s, or anything with
    ``handle`` and ``gzip``) but ``exclude`` (an object of the list, compared by
    identity); return how many had a handle. See the Cython module."""
    _check_bytes(payload, "payload")
    big = compress is not None and len(payload) > gzip_threshold
    dbig = deflate is not None and len(payload) > deflate_threshold
    frame: bytes | None = None
    gzframe: bytes | None = None
    dframe: bytes | None = None
    gz: bytes | None = None
    n = 0
    seq = conns if type(conns) is list or type(conns) is tuple else list(conns)
    for i in range(len(seq)):
        if i >= len(seq):  # shrunk by a fallback handle's send_*
            break
        c = seq[i]
        if c is exclude:
            continue
        h = c.handle
        if h is None:
            continue
        n += 1
        if big and c.gzip:
            if gz is None:
                assert compress is not None
                gz = compress(payload)
                if type(gz) is not bytes:
                    gz = bytes(gz)
            if isinstance(h, FanoutListener):
                if gzframe is None:
                    gzframe = encode_frame(_OP_BINARY, gz)
                h._put(gzframe, kind)
            else:
                h.send_binary(gz, kind)
        elif isinstance(h, FanoutListener):
            if dbig and h.deflate:
                if dframe is None:
                    assert deflate is not None
                    d = deflate(payload)
                    if type(d) is not bytes:
                        d = bytes(d)
                    dframe = encode_frame(_OP_TEXT, d, rsv1=True)
                h._put(dframe, kind)
            else:
                if frame is None:
                    frame = encode_frame(_OP_TEXT, payload)
                h._put(frame, kind)
        else:
            h.send_text(payload, kind)
    return n
