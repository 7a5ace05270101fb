# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, auto_pickle=False
"""Encode-once fan-out with per-connection write batching (corking).

Compiled twin of ``chathub._fastpath._fanout_py``; the tests drive both with the same
random sequence of broadcasts, sends, pauses, resumes and closes and require the same
bytes written to every connection, in the same writes, and the same closes.

* ``broadcast()`` builds a payload's WebSocket frame once (and once more, lazily, as a
  binary gzip frame if a recipient asked for gzip, and as a permessage-deflate text frame,
  RSV1 set, if a recipient negotiated deflate) and hands the *same* bytes object to every
  recipient's listener, at C level: no Python-level call per recipient.
* Each ``FanoutListener`` corks what it is given during one loop iteration: the first
  frame is kept by reference (no copy), further ones are copied into a cork buffer
  allocated on demand (never for an idle connection) and freed after the write.
* Broadcast batches: a broadcast to a list of connections corks one ``_Batch`` (its
  frame) by reference in every listener whose cork is empty. The next broadcast in the
  same iteration to the very same list (same connection objects, same order: compared
  with one ``memcmp`` of the list's item pointers), as the hub sends for a burst of
  messages in one room, appends its frame to the batch once, with no per-recipient work
  at all; every listener still writes its whole cork in one write. The hub passes a
  room message as the room's member list plus ``exclude`` (its origin); when the
  excluded connection holds the batch it leaves it with a copy of the frames so far.
  So does a listener whose bytes diverge otherwise: a frame of its own, a pause, a write
  before the end of the iteration; one that already had something corked joins that
  way. Listeners that left (or were excluded when it opened) get each later frame one by
  one, so the others keep sharing one batch; past ``_MAX_DEPARTED`` of them, or when a
  frame would take it to ``cork_cap``, the batch takes no more frames. The writes on
  the wire are exactly those of corking each frame in each listener (the twin does
  that).
* Deferred broadcasts (``Fanout._defer``): a broadcast to a room's member list
  (``MemberList``) whose cached handles are all listeners of one fanout, needing no gzip
  or deflate variant, touches no listener at all: its frame goes into the fanout's
  deferred batch (further frames to the same list in the iteration are appended, with
  up to ``_MAX_EXCLUDED`` distinct excluded origins). The end-of-iteration flush writes
  it in one pass over the cached handles: one ``send()`` of the whole batch to each
  member with nothing corked and not behind, reading its listener once; the others get
  it frame by frame through ``_put``. Anything that touches a member's send state first
  (``_put``, a flush, a close, a pause or resume, ``release``, the introspection
  properties, a broadcast to another list) settles the batch (``_settle``): it is handed
  to the members' corks as an immediate broadcast would have, so order and writes stay
  those of corking each frame in each listener. Only a transport that changes state of
  its own accord in between (a pause inside picows' own ping, pong or close write, a
  reset) may see a member that had frames of its own corked get the same bytes cut
  into other writes; whatever the settling writes then goes through the transport,
  behind picows' bytes.
* The ``Fanout`` flushes every corked listener once at the end of the iteration (one
  ``loop.call_soon`` per iteration), or a listener at once when its cork reaches
  ``cork_cap`` bytes. One write per connection per iteration, whatever the number of
  frames: on plain TCP one ``send()`` on the socket itself while the transport holds
  nothing (``attach()`` sets its write-buffer limits to 0, so it pauses the listener the
  moment it holds a byte), otherwise the transport's write (``WSTransport._fast_write``).
* Slow consumers (docs/protocol.md): while the transport is paused (``pause_writing``:
  it holds bytes the socket did not take) or
  frames already wait, MESSAGE frames go to a bounded queue (``max_queue_frames`` frames,
  ``max_queue_bytes`` bytes), EPHEMERAL frames are dropped (``shed``); overflow closes
  the connection with 1013 and aborts it. ``resume_writing`` writes the cork, then the
  queue (coalesced up to ``cork_cap`` a write) until the transport pauses again.
* Order per connection: everything for a connection (broadcasts, replies, the close
  frame) goes through the same cork; the cork is older than the queue and is written
  first; ``close`` writes the cork before the close frame (an abort drops both).
* Memory: an idle connection holds no buffer here (the listener is ~190 bytes), and
  ``attach()`` drops what picows keeps per connection but no longer needs after the
  handshake (about 2.4 KB). ``broadcast()`` reads the hub ``Conn``'s ``handle``/``gzip``
  slots at their ``__slots__`` offsets (exact type check; getattr for anything else).
"""

import asyncio
import collections
import logging

cimport cython

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Check, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.object cimport PyObject, PyTypeObject
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy

from picows.picows cimport MemoryBuffer, WSCloseCode, WSListener, WSTransport

from chathub._fastpath._frame cimport build_frame, frame_header_size
from chathub._fastpath._slots cimport (
    PyMemberDescr_Type, PyMemberDescrObject, Py_TYPE, T_OBJECT_EX, slot_get, slot_replace,
)

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

cdef enum:
    _MAX_DEPARTED = 64  # listeners a batch hands frames one by one; beyond, it closes
    _MAX_EXCLUDED = 8   # distinct excluded origins a deferred batch takes; beyond, it is settled
    _OP_TEXT = 0x1
    _OP_BINARY = 0x2
    _MIN_CORK_ALLOC = 4096
    _PICOWS_WRITE_BUFFER = 128

cdef extern from *:
    """
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL  /* macOS: none (Python ignores SIGPIPE anyway) */
    #define MSG_NOSIGNAL 0
    #endif
    """
    ssize_t _c_send "send"(int fd, const void* buf, size_t n, int flags) nogil
    int _MSG_NOSIGNAL "MSG_NOSIGNAL"

log = logging.getLogger("chathub.ws")

cdef object _deque = collections.deque
cdef object _get_running_loop = asyncio.get_running_loop


cdef extern from "Python.h":
    ctypedef struct PyListObject:
        PyObject** ob_item


cdef inline bint _same_items(list a, list b) noexcept:
    """``a`` and ``b`` hold the very same objects in the same order."""
    cdef Py_ssize_t n = PyList_GET_SIZE(a)
    if a is b:
        return True
    if n != PyList_GET_SIZE(b):
        return False
    return memcmp((<PyListObject*>a).ob_item, (<PyListObject*>b).ob_item, n * sizeof(PyObject*)) == 0


cdef inline bint _listed(list a, object o) noexcept:
    """``o`` itself (not an equal object) is an item of ``a``."""
    cdef Py_ssize_t i
    for i in range(PyList_GET_SIZE(a)):
        if PyList_GET_ITEM(a, i) == <PyObject*>o:
            return True
    return False


cdef char* _reserve(char* buf, Py_ssize_t* alloc, Py_ssize_t need) except NULL:
    """``buf`` (malloc'd, ``alloc[0]`` bytes; or NULL) with room for ``need`` bytes: the
    size starts at ``_MIN_CORK_ALLOC`` and doubles; ``alloc[0]`` is updated. On failure
    ``buf`` is left as it was."""
    cdef Py_ssize_t a
    cdef char* p
    if buf is not NULL and need <= alloc[0]:
        return buf
    a = alloc[0] * 2 if buf is not NULL else _MIN_CORK_ALLOC
    while a < need:
        a *= 2
    p = <char*>realloc(buf, a)  # realloc(NULL, a): malloc
    if p is NULL:
        raise MemoryError()
    alloc[0] = a
    return p


cdef inline char* _batch_data(_Batch b) noexcept:
    return b.buf if b.buf is not NULL else PyBytes_AS_STRING(b.first)


cdef inline char* _pending_data(object pending, Py_ssize_t* size) noexcept:
    """The bytes of a cork held by reference (``_pending``: one frame or a batch)."""
    if type(pending) is bytes:
        size[0] = PyBytes_GET_SIZE(pending)
        return PyBytes_AS_STRING(pending)
    size[0] = (<_Batch>pending).size
    return _batch_data(<_Batch>pending)


@cython.final
cdef class _Batch:
    """Frames of broadcasts to one list of connections in one loop iteration, held by
    reference as the whole cork of each of its listeners (see the module docstring)."""

    def __dealloc__(self):
        if self.buf is not NULL:
            free(self.buf)
            self.buf = NULL

    cdef void close(self) noexcept:
        """No more frames: a listener's cork diverges from the others (or the iteration ends)."""
        if self.open:
            self.open = False
            self.targets = None
            self.departed = None
            # (last: the fanout's reference may be the last one; callers hold their own)
            if self.fanout is not None and self.fanout._open is self:
                self.fanout._open = None

    cdef inline bint has_room(self) noexcept:
        """Open, and may hand one more listener its later frames one by one."""
        return self.open and PyList_GET_SIZE(self.departed) < _MAX_DEPARTED

    cdef bint admit(self, FanoutListener lst) except -1:
        """Hand ``lst`` the later frames one by one (it does not hold the batch); if the
        batch cannot (``has_room`` false), close it: False."""
        if self.has_room():
            self.departed.append(lst)
            return True
        self.close()
        return False

    cdef bint spares(self, FanoutListener lst) noexcept:
        """(deferred) ``lst`` is excluded from every frame: nothing of it is due to ``lst``."""
        cdef list frames = self.frames
        cdef Py_ssize_t i
        for i in range(PyList_GET_SIZE(frames)):
            if PyTuple_GET_ITEM(<tuple>PyList_GET_ITEM(frames, i), 2) is not <PyObject*>lst:
                return False
        return True

    cdef int append(self, bytes frame) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        cdef Py_ssize_t need = self.size + n
        cdef char* p
        if self.buf is NULL:
            p = _reserve(NULL, &self.alloc, need)
            memcpy(p, PyBytes_AS_STRING(self.first), self.size)
            self.buf = p
            self.first = None
        else:
            self.buf = _reserve(self.buf, &self.alloc, need)
        memcpy(self.buf + self.size, PyBytes_AS_STRING(frame), n)
        self.size = need
        return 0


cdef class Fanout:
    """Per-event-loop corking state and the slow-consumer limits, shared by the listeners.

    ``loop`` is the loop whose ``call_soon`` runs the end-of-iteration flush and whose
    ``call_later`` times a graceful close; None: the running loop, looked up when needed.
    A Fanout serves one event loop: a flush scheduled on a loop that stops before running
    it is not rescheduled elsewhere (call ``flush()`` by hand).
    """

    def __init__(self, Py_ssize_t max_queue_frames=1000, Py_ssize_t max_queue_bytes=MAX_QUEUED_BYTES,
                 Py_ssize_t cork_cap=CORK_CAP, double close_timeout=CLOSE_TIMEOUT, loop=None):
        if max_queue_frames < 1 or max_queue_bytes < 1 or cork_cap < 1:
            raise ValueError("max_queue_frames, max_queue_bytes and cork_cap must be positive")
        self.max_queue_frames = max_queue_frames
        self.max_queue_bytes = max_queue_bytes
        self.cork_cap = cork_cap
        self.close_timeout = close_timeout
        self.loop = loop
        self._dirty = []
        self._scheduled_on = None
        self._flush_cb = self.flush

    @property
    def corked(self):
        """Number of listeners waiting for the end-of-iteration flush (deferred
        broadcasts settled first)."""
        self._settle()
        return len(self._dirty)

    def settle(self):
        """Hand the deferred broadcasts (``_defer``) to their listeners' corks now, as
        ``broadcast()`` would have at once: the listeners' counters and flags (``shed``,
        ``queued_bytes``, ``paused``...) are then what they would be without deferral.
        What is written, and in which writes, is the same either way."""
        self._settle()

    cdef object _get_loop(self):
        return self.loop if self.loop is not None else _get_running_loop()

    cdef int _schedule(self) except -1:
        if self._scheduled_on is None:  # the first in this iteration: one call_soon
            loop = self._get_loop()
            loop.call_soon(self._flush_cb)
            self._scheduled_on = loop
        return 0

    cdef int _mark(self, FanoutListener lst) except -1:
        lst._dirty = True
        self._dirty.append(lst)
        self._schedule()
        return 0

    def flush(self):
        """Write every corked listener's frames (one write each), and the deferred
        broadcasts. Runs once at the end of every loop iteration in which something was
        corked or deferred."""
        cdef list dirty
        cdef FanoutListener lst
        cdef Py_ssize_t i
        cdef _Batch ob = self._open  # (a reference of our own: close() drops the fanout's)
        cdef _Batch d = self._deferred
        cdef object err = None
        if ob is not None:
            ob.close()
        if d is not None:
            # (before the corked listeners: a listener it cannot write directly is corked
            # for them; still in this iteration's list, so no new call_soon)
            self._deferred = None
            try:
                self._hand_out(d, True)
            except BaseException as e:  # (MemoryError) the corked ones are still written
                err = e
        dirty = self._dirty
        self._dirty = []
        self._scheduled_on = None
        for i in range(len(dirty)):
            lst = <FanoutListener>dirty[i]
            lst._dirty = False
            lst._flush()
        if err is not None:
            raise err

    # ---------------------------------------------------------------- deferred broadcasts

    cdef Py_ssize_t _defer(self, list seq, list hs, bytes payload, int kind, object exclude) except -2:
        """Broadcast ``payload`` to the member list ``seq`` (``hs``: its members'
        listeners, all of this fanout) but ``exclude``, without touching any listener:
        the frame joins the deferred batch (one per fanout: the same list's next frames in
        this iteration are appended to it), which the end-of-iteration flush writes in one
        pass over ``hs`` (``_hand_out``): for most recipients one ``send()`` of the
        whole batch, reading the listener once. Anything that touches the send state of a
        listener the batch is due to (a frame of its own, a flush, a pause, a close, a
        broadcast to another list) first settles the batch (``_settle``): it is handed to
        the listeners' corks as ``broadcast()`` would have at once, so the order and the
        writes are those of corking every frame in every listener. Returns the
        broadcast's answer, or -1 if it cannot be deferred (``exclude`` listed twice, a
        frame of ``cork_cap`` bytes or more)."""
        cdef Py_ssize_t i, n = PyList_GET_SIZE(seq), at = -1
        cdef PyObject** items = (<PyListObject*>seq).ob_item
        cdef _Batch d = self._deferred
        cdef FanoutListener ex = None
        cdef bytes frame
        cdef bint new_ex
        cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t flen = frame_header_size(size) + size
        if exclude is not None:
            for i in range(n):
                if items[i] == <PyObject*>exclude:
                    if at >= 0:
                        return -1
                    at = i
            if at >= 0:
                ex = <FanoutListener>PyList_GET_ITEM(hs, at)
        if d is not None:
            new_ex = ex is not None and not _listed(d.exs, ex)
            if (_same_items(d.targets, seq) and d.size + flen < self.cork_cap
                    and not (new_ex and PyList_GET_SIZE(d.exs) >= _MAX_EXCLUDED)):
                frame = build_frame(_OP_TEXT, PyBytes_AS_STRING(payload), size, True, False)
                d.append(frame)
                d.frames.append((frame, kind, ex))
                if new_ex:
                    d.exs.append(ex)
                self.deferred += 1
                return n - (at >= 0)
            self._settle()
        if flen >= self.cork_cap:
            return -1  # (the frame is built by the broadcast that takes it)
        frame = build_frame(_OP_TEXT, PyBytes_AS_STRING(payload), size, True, False)
        if self._open is not None:
            self._open.close()  # its holders may be due this batch too: it takes no more
        d = _Batch.__new__(_Batch)
        d.first = frame
        d.size = PyBytes_GET_SIZE(frame)
        d.fanout = self
        d.targets = seq
        d.hs = hs
        d.frames = [(frame, kind, ex)]
        d.exs = [ex] if ex is not None else []
        self._deferred = d
        self._schedule()
        self.deferred += 1
        return n - (at >= 0)

    cdef int _settle(self) except -1:
        """Hand the deferred batch, if any, to its listeners' corks: by reference to
        each whose cork is empty and that is not behind (as ``_put_batch`` would have),
        frame by frame (``_put``) to the others."""
        cdef _Batch d = self._deferred
        if d is not None:
            self._deferred = None
            self._hand_out(d, False)
        return 0

    cdef int _hand_out(self, _Batch d, bint write) except -1:
        """Every member of the deferred batch ``d`` gets what it is due, in the order of
        the broadcasts: one excluded from some of them gets the others one by one
        (``_put``); a closing or detached one nothing; one with nothing corked and not
        behind the whole batch, written now (``write``) or corked by reference; any
        other one the frames one by one (``_put``)."""
        cdef list hs = d.hs
        cdef list frames = d.frames
        cdef list exs = d.exs
        cdef Py_ssize_t i, j
        cdef const char* data = _batch_data(d)
        cdef Py_ssize_t size = d.size
        cdef FanoutListener lst
        cdef tuple t
        for i in range(PyList_GET_SIZE(hs)):
            lst = <FanoutListener>PyList_GET_ITEM(hs, i)
            if not (PyList_GET_SIZE(exs) and _listed(exs, lst)):
                if lst.closing or lst.transport is None:
                    continue
                if not lst.paused and lst._pending is None and lst._cork is NULL and lst._queue is None:
                    if write:
                        lst._send_now(data, size)
                    else:
                        lst._pending = d
                        if not lst._dirty:
                            self._mark(lst)
                    continue
            # frame by frame (but those it is excluded from)
            for j in range(PyList_GET_SIZE(frames)):
                t = <tuple>PyList_GET_ITEM(frames, j)
                if PyTuple_GET_ITEM(t, 2) != <PyObject*>lst:
                    lst._put(<bytes>t[0], <int>t[1])
        return 0


cdef inline int _settle_for(FanoutListener lst) except -1:
    """Before anything touches ``lst``'s send state: settle its fanout's deferred batch
    unless none of it is due to ``lst``."""
    cdef _Batch d = lst.fanout._deferred
    if d is not None and not d.spares(lst):
        lst.fanout._settle()
    return 0


cdef class FanoutListener(WSListener):
    """Send side of one WebSocket connection: cork, bounded queue, ordered close.

    A picows listener base: the adapter (``chathub.server.ws.WsConnection``) subclasses it
    and sets ``transport`` in ``on_ws_connected``. The send state lives in C fields; an
    idle connection holds no buffer at all.
    """

    def __init__(self, Fanout fanout not None):
        self.fanout = fanout
        self.deflate = False

    def __dealloc__(self):
        if self._cork is not NULL:
            free(self._cork)
            self._cork = NULL

    # ---------------------------------------------------------------- introspection

    @property
    def queued_frames(self):
        _settle_for(self)
        return 0 if self._queue is None else len(self._queue)

    @property
    def corked_bytes(self):
        _settle_for(self)
        return self._corked_size()

    cpdef attach(self, WSTransport transport):
        """Take the connection's transport (from ``on_ws_connected``) and trim what picows
        keeps per connection but no longer needs once the handshake is done: the upgrade
        request and response (headers and all) and the 1 KiB write buffer, replaced by
        one of ``_PICOWS_WRITE_BUFFER`` bytes (the fan-out writes from its own buffers;
        picows' own writes here are pings and close frames, whose header, code and
        120-byte reason fit; anything bigger grows it again). About 2.4 KB a connection.
        """
        self.transport = transport
        self.direct = False
        if transport is not None:
            transport.request = None
            transport.response = None
            if transport._write_buffer is not None and transport._write_buffer.capacity > _PICOWS_WRITE_BUFFER:
                transport._write_buffer = MemoryBuffer(_PICOWS_WRITE_BUFFER)
            self._go_direct(transport)

    cdef int _go_direct(self, WSTransport t) except -1:
        """Direct writes: with the transport's write-buffer limits at 0, it pauses us
        (``pause_writing``, synchronously, inside the write that buffers) as soon as it
        holds a single byte and resumes us once it holds none. So while not paused its
        buffer is empty, and a flush may ``send()`` on the socket itself, with no call into
        the event loop's transport per write (each one costs the kernel more than the call
        itself: it touches one more cold object per connection). What ``send()`` does not
        take goes to the transport, which buffers it and pauses us. Plain TCP only (not
        TLS, not a transport without limits or socket, e.g. the tests' fakes).

        On uvloop the listener also becomes the transport's protocol, in front of
        picows' (``get_buffer``, ``buffer_updated``, ``connection_lost`` and
        ``eof_received`` are handed on to it). A direct write must never follow a close
        frame or the disconnect. The close frames picows sends of its own accord (a
        protocol error of the client, an exception out of a listener callback) are all
        sent while it processes received bytes, inside ``buffer_updated``; the disconnect
        reaches picows through ``connection_lost``. Standing in front of both, the
        listener learns of each at once and stops writing, so a flush need not read the
        transport's flags: one cold object fewer per recipient. Elsewhere (asyncio's
        transports) a flush reads them."""
        if t.is_secure or t._socket < 0:
            return 0
        ut = t.underlying_transport
        try:
            ut.set_write_buffer_limits(0)
        except Exception:  # not a transport with flow control limits
            return 0
        self._fd = t._socket
        self.direct = True
        if type(ut).__module__.startswith("uvloop"):
            proto = ut.get_protocol()
            if proto is not None and not self.closing:
                self._proto = proto
                ut.set_protocol(self)
        return 0

    # ---------------------------------------------------- the transport's protocol (uvloop)

    def get_buffer(self, Py_ssize_t size_hint):
        """(uvloop) Handed on to picows' protocol; see ``_go_direct``."""
        return self._proto.get_buffer(size_hint)

    def buffer_updated(self, Py_ssize_t nbytes):
        """(uvloop) Handed on to picows' protocol; if picows sent a close frame while it
        processed these bytes, nothing more is written (see ``_go_direct``)."""
        cdef WSTransport t
        try:
            self._proto.buffer_updated(nbytes)
        finally:
            t = self.transport
            if t is not None and t.is_close_frame_sent and not self.closing:
                self.closing = True
                self._release()

    def eof_received(self):
        """(uvloop) Handed on to picows' protocol."""
        return self._proto.eof_received()

    def connection_lost(self, exc):
        """(uvloop) Handed on to picows' protocol (which calls ``on_ws_disconnected``);
        nothing is written after it, whatever that callback does (uvloop closes the socket
        right after)."""
        proto = self._proto
        try:
            if proto is not None:
                proto.connection_lost(exc)
        finally:
            self.closing = True
            self._release()
            self._proto = None

    # ---------------------------------------------------------------- send side

    def send_text(self, bytes payload not None, int kind=MESSAGE):
        """Queue ``payload`` as one text frame (order kept with everything else sent here)."""
        self._put(build_frame(_OP_TEXT, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False), kind)

    def send_binary(self, bytes payload not None, int kind=MESSAGE):
        """Queue ``payload`` as one binary frame."""
        self._put(build_frame(_OP_BINARY, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False), kind)

    def send_frame(self, bytes frame not None, int kind=MESSAGE):
        """Queue an already encoded frame (header + payload); the bytes are not copied
        unless corked behind another frame, and must not be changed afterwards."""
        self._put(frame, kind)

    cpdef flush(self):
        """Write this connection's cork now (one write)."""
        self._flush()

    cpdef close(self, int code, str reason, bint abort=False):
        """Close with ``code``: what is corked is written first, then the close frame;
        queued frames are dropped. ``abort`` (slow consumer) drops the cork too and resets
        the connection; otherwise the client has ``close_timeout`` seconds to answer."""
        cdef WSTransport t = self.transport
        _settle_for(self)
        if self.closing or t is None:
            return
        if not abort:
            self._flush()
            if self.closing:  # the write failed: already aborted
                return
        self.closing = True
        self._release()
        try:
            t.send_close(<WSCloseCode>code, reason.encode()[:120])
        finally:
            # wait for the client's close frame, but not for long; a slow consumer's
            # buffer may never drain, so it is reset then (graceful=False) — it still gets
            # the close frame if it reads within close_timeout
            self.fanout._get_loop().call_later(self.fanout.close_timeout, (<object>t).disconnect, not abort)

    cpdef release(self):
        """The connection is gone: drop everything held for it (no write)."""
        _settle_for(self)  # (only so that the fanout's counters stay those of broadcast() at once)
        self.closing = True
        self._release()

    cpdef pause_writing(self):
        cdef object pending
        cdef bint direct = self.direct
        if self.fanout._deferred is not None:
            # The transport holds bytes already (this is its call, from inside a write):
            # when the deferred batch was not written by us (picows' ping, pong or close),
            # whatever settling it writes (a cork at the cap) must go behind them, through
            # the transport, not send() on the socket.
            self.direct = False
            try:
                _settle_for(self)
            finally:
                self.direct = direct
        pending = self._pending
        self.paused = True
        if pending is not None and type(pending) is not bytes:
            # a paused connection queues what comes next: it leaves the batch
            self._leave(<_Batch>pending, True)

    cpdef resume_writing(self):
        """The transport drained below its low-water mark: write the cork, then the queue,
        coalesced up to ``cork_cap`` bytes a write, until it pauses again."""
        cdef bytes frame
        cdef Py_ssize_t cap = self.fanout.cork_cap
        cdef Py_ssize_t size
        cdef bint before = self.paused
        _settle_for(self)
        if self.paused and not before:
            return  # a write of the settling filled the transport again: it resumes us later
        self.paused = False
        if self.closing:
            return
        self._flush()  # corked frames are older than the queued ones
        q = self._queue
        while q is not None and not self.paused and not self.closing:
            frame = <bytes>q[0]
            size = self._corked_size()
            if size and size + PyBytes_GET_SIZE(frame) > cap:
                self._flush()  # may pause: then the frame stays queued
                continue
            q.popleft()
            self.queued_bytes -= PyBytes_GET_SIZE(frame)
            if not q:
                self._queue = q = None
            self._append(frame)
            if self._corked_size() >= cap:
                self._flush()
        self._flush()

    # ---------------------------------------------------------------- C level

    cdef Py_ssize_t _corked_size(self) noexcept:
        cdef object p = self._pending
        if p is not None:
            if type(p) is bytes:
                return PyBytes_GET_SIZE(p)
            return (<_Batch>p).size
        return self._cork_len

    cdef int _put(self, bytes frame, int kind) except -1:
        """The one entry point for every frame to this connection."""
        cdef Py_ssize_t n, size, cap
        _settle_for(self)  # (first: it may close this very listener)
        if self.closing or self.transport is None:
            return 0
        if self.paused or self._queue is not None:
            return self._enqueue(frame, kind)
        n = PyBytes_GET_SIZE(frame)
        cap = self.fanout.cork_cap
        size = self._corked_size()
        if size and size + n > cap:
            self._flush()
            if self.closing:
                return 0
            if self.paused:
                return self._enqueue(frame, kind)
        self._append(frame)
        if not self._dirty:
            self.fanout._mark(self)
        if self._corked_size() >= cap:
            self._flush()
        return 0

    cdef int _enqueue(self, bytes frame, int kind) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        cdef Fanout f = self.fanout
        q = self._queue
        if kind == EPHEMERAL:
            self.shed += 1
            return 0
        if (q is not None and len(q) >= f.max_queue_frames) or self.queued_bytes + n > f.max_queue_bytes:
            self.close(CLOSE_TRY_AGAIN, SLOW_CONSUMER, True)
            return 0
        if q is None:
            self._queue = q = _deque()
        q.append(frame)
        self.queued_bytes += n
        return 0

    cdef int _put_batch(self, _Batch b, int kind) except -1:
        """``_put`` of a new batch's (only) frame: the batch itself is corked, by
        reference, if the cork is empty (after writing it if the frame would take it past
        the cap): 1; otherwise its frame goes through ``_put`` and the listener joins the
        batch's departed ones (later frames one by one): 0. A closing listener takes
        nothing: it would take nothing from the batch's later frames either."""
        cdef bytes frame = b.first
        cdef Py_ssize_t cap = self.fanout.cork_cap
        cdef Py_ssize_t size
        _settle_for(self)
        if self.closing:
            return 0  # gets nothing, now or from the batch's later frames
        if (self.transport is not None and not self.paused and self._queue is None
                and PyBytes_GET_SIZE(frame) < cap):
            size = self._corked_size()
            if size and size + PyBytes_GET_SIZE(frame) > cap:
                self._flush()
                size = self._corked_size()
            if size == 0 and not self.closing and not self.paused:
                self._pending = b
                if not self._dirty:
                    self.fanout._mark(self)
                return 1
        # something of its own is corked or queued: the frame goes in as any other, and
        # the batch hands it its later frames one by one
        self._put(frame, kind)
        if not self.closing:
            b.admit(self)
        return 0

    cdef int _leave(self, _Batch b, bint copy) except -1:
        """Stop holding ``b`` (the whole cork) because this connection's bytes diverge
        from the other holders' (it is the origin of the frame being added, gets a frame
        of its own, pauses, or was written): with ``copy``, the batch's frames so far
        become a cork of its own; ``b`` then hands it each later frame through ``_put``.
        When ``b`` already hands out ``_MAX_DEPARTED`` it is closed instead (and, with
        ``copy``, stays this listener's cork as it is)."""
        cdef char* p
        if not b.has_room():
            b.close()
            return 0
        if copy:
            p = _reserve(NULL, &self._cork_alloc, b.size)
            memcpy(p, _batch_data(b), b.size)
            self._cork = p
            self._cork_len = b.size
        self._pending = None
        b.admit(self)
        return 0

    cdef int _append(self, bytes frame) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        cdef Py_ssize_t need, plen
        cdef char* pdata
        cdef char* p
        cdef object pending = self._pending
        if pending is None and self._cork_len == 0:
            self._pending = frame
            return 0
        if pending is not None and type(pending) is not bytes:
            # a batch: this cork now diverges from the batch's other listeners
            self._leave(<_Batch>pending, True)
        need = self._corked_size() + n
        if self._cork is NULL:
            # (still the batch if it was closed instead)
            pdata = _pending_data(self._pending, &plen)
            p = _reserve(NULL, &self._cork_alloc, need)
            memcpy(p, pdata, plen)
            self._cork = p
            self._cork_len = plen
            self._pending = None
        else:
            self._cork = _reserve(self._cork, &self._cork_alloc, need)
        memcpy(self._cork + self._cork_len, PyBytes_AS_STRING(frame), n)
        self._cork_len += n
        return 0

    cdef int _flush(self) except -1:
        """Write what is corked in one write; nothing after a close frame or a disconnect."""
        cdef object pending
        cdef char* buf
        cdef const char* data
        cdef Py_ssize_t n
        _settle_for(self)
        pending = self._pending
        buf = self._cork
        data = buf
        n = self._cork_len
        if pending is None and buf is NULL:
            return 0
        # take the data out first: the write may call back (pause_writing)
        if pending is not None:
            data = _pending_data(pending, &n)
            if type(pending) is not bytes:
                # written now: the batch's later frames come one by one
                self._leave(<_Batch>pending, False)
        self._pending = None
        self._cork = NULL
        self._cork_len = 0
        self._cork_alloc = 0
        try:
            self._send_now(data, n)
        finally:
            if buf is not NULL:
                free(buf)
        return 0

    cdef int _send_now(self, const char* data, Py_ssize_t n) except -1:
        cdef WSTransport t
        try:
            # (the transport's flags are read in place, without a reference taken: the
            # direct path touches no other part of it)
            if self.closing or self.transport is None:
                return 0
            if self._proto is None and (self.transport.is_close_frame_sent or self.transport.is_disconnected):
                return 0  # (standing in for picows' protocol, the listener knows already)
            self._write(data, n)
        except Exception:
            log.warning("write to a WebSocket failed; dropping the connection", exc_info=True)
            self.closing = True
            self._release()
            t = self.transport
            try:
                if t is not None:
                    t.disconnect(False)
            except Exception:
                pass
        return 0

    cdef int _write(self, const char* p, Py_ssize_t n) except -1:
        """One write of ``n`` bytes to an open connection.

        Direct (``_go_direct``) and not paused: the transport holds nothing, so ``send()``
        on the socket keeps the byte order; the rest, if any, goes to the transport. The
        socket cannot be a reused descriptor: uvloop closes it only after the protocol's
        ``connection_lost``, which first sets ``is_disconnected`` (checked by the caller)
        or, where the listener is the protocol, ``closing``; until then a write to a
        connection that is already closing is harmless (the transport drops what it is
        handed). Otherwise picows' ``_fast_write`` (which asks
        the transport for its buffer size), unless the transport is closing."""
        cdef ssize_t w
        cdef WSTransport t
        if self.direct and not self.paused:
            w = _c_send(self._fd, p, <size_t>n, _MSG_NOSIGNAL)
            if w == n:
                return 0
            if w < 0:
                w = 0  # EAGAIN, EINTR or an error: the transport's write meets it again
            t = self.transport
            t._tr_write(PyBytes_FromStringAndSize(p + w, n - w))
            return 0
        t = self.transport
        if t.underlying_transport.is_closing():
            return 0  # closed under us (reset): the write must not happen
        t._fast_write(<char*>p, n)
        return 0

    cdef void _release(self) noexcept:
        # (a batch it held goes on without it: closing, it takes no more frames anyway)
        self._pending = None
        if self._cork is not NULL:
            free(self._cork)
            self._cork = NULL
        self._cork_len = 0
        self._cork_alloc = 0
        self._queue = None
        self.queued_bytes = 0


# -------------------------------------------------------------------- broadcast

# The hub's Conn keeps ``handle`` and ``gzip`` in __slots__: once its type is seen, both
# are read straight from the instance at their slot offsets (guarded by an exact type
# check); any other object is read with getattr.
cdef PyTypeObject* _slot_type = NULL
cdef object _slot_type_ref = None
cdef Py_ssize_t _handle_off = 0
cdef Py_ssize_t _gzip_off = 0


cdef Py_ssize_t _slot_offset(object tp, str name) except -2:
    """Offset of the ``__slots__`` member ``name`` of ``tp``, or -1 if it is not a plain
    slot (a property, a class attribute, a custom ``__getattribute__``...)."""
    cdef PyMemberDescrObject* d
    for klass in tp.__mro__:
        found = klass.__dict__.get(name)
        if found is not None:
            if Py_TYPE(found) is not &PyMemberDescr_Type:
                return -1
            d = <PyMemberDescrObject*><PyObject*>found
            if d.d_member.type != T_OBJECT_EX:
                return -1
            return d.d_member.offset
    return -1


cdef int _learn(object c) except -1:
    global _slot_type, _slot_type_ref, _handle_off, _gzip_off
    cdef Py_ssize_t h, g
    tp = type(c)
    if tp.__getattribute__ is not object.__getattribute__:
        return 0
    h = _slot_offset(tp, "handle")
    g = _slot_offset(tp, "gzip")
    if h < 0 or g < 0:
        return 0
    _slot_type_ref = tp  # keeps the type alive while its pointer is cached
    _slot_type = <PyTypeObject*>tp
    _handle_off = h
    _gzip_off = g
    return 0


cdef inline object _slot(object c, Py_ssize_t off, str name):
    cdef PyObject* v = slot_get(c, off)
    if v is NULL:
        return getattr(c, name)  # unset slot: AttributeError, as for getattr
    return <object>v


def broadcast(conns, bytes payload not None, int kind=MESSAGE, Py_ssize_t gzip_threshold=1024,
              compress=None, deflate=None, Py_ssize_t deflate_threshold=DEFLATE_THRESHOLD, exclude=None):
    """Write ``payload`` to every connection of ``conns`` (hub ``Conn``s, or anything with
    ``handle`` and ``gzip``) but ``exclude`` (an object of the list, compared by
    identity: a room message's origin); return how many had a handle.

    The text frame is built once and the same bytes are corked for every recipient whose
    handle is a ``FanoutListener``. A payload longer than ``gzip_threshold`` goes to
    recipients with ``gzip`` set as one binary frame of ``compress(payload)``, computed
    once, only if there is such a recipient. A payload longer than ``deflate_threshold``
    goes to the other recipients whose listener has ``deflate`` set (permessage-deflate,
    RFC 7692) as one text frame with RSV1 set holding ``deflate(payload)`` (raw deflate,
    trailing 00 00 ff ff removed), also computed once and only if needed; gzip wins for a
    connection that asked for it. Other handles (tests' in-memory ones) get
    ``send_text(payload, kind)`` / ``send_binary(gz, kind)``.

    Broadcasts to the same list (same objects, same order) in one loop iteration share
    one batch (module docstring); ``exclude`` may differ from one to the next (several
    senders in one room): an excluded connection that holds the batch leaves it with a
    copy of its frames so far and gets the later ones one by one.
    """
    return c_broadcast(conns, payload, kind, gzip_threshold, compress, deflate, deflate_threshold, exclude)


cdef inline object _handle_of(object c):
    return _slot(c, _handle_off, "handle") if Py_TYPE(c) is _slot_type else getattr(c, "handle", None)


cdef inline object _gzip_of(object c):
    return _slot(c, _gzip_off, "gzip") if Py_TYPE(c) is _slot_type else c.gzip


# A room's member list (``chathub.core.hub.MemberList``: a list subclass with a ``fan``
# slot, never changed once handed out) carries the fan-out's copy of its members'
# handles and gzip flags, made by the first broadcast to it. Later broadcasts to the same
# list take each recipient's handle from that dense list instead of its ``Conn``: one cold
# object fewer per recipient. A member's handle changes only when it disconnects, and the
# hub removes it from its rooms first (a new list); a copy still holding a closed
# listener writes nothing to it (the listener is released).
cdef PyTypeObject* _fan_type = NULL
cdef object _fan_type_ref = None
cdef Py_ssize_t _fan_off = 0


cdef tuple _member_cache(list seq):
    """``(handles, gzip flags, fanout, any gzip, any deflate)`` of ``seq``: its members'
    handles and gzip flags index for index; the ``Fanout`` of every handle if all are
    distinct ``FanoutListener``s of one fanout (else None: no deferred broadcast); whether
    any member asked for gzip, and whether any listener negotiated permessage-deflate
    (fixed at the handshake, before a connection joins a room). Kept on ``seq`` if it is
    a list type with a ``fan`` slot; None for any other list."""
    global _fan_type, _fan_type_ref, _fan_off
    cdef PyObject* v
    cdef Py_ssize_t i, n, off
    cdef list hs
    cdef bytearray gz
    cdef tuple cache
    tp = type(seq)
    if tp is list:
        return None
    if <PyTypeObject*>tp is not _fan_type:
        if tp.__getattribute__ is not list.__getattribute__:
            return None
        off = _slot_offset(tp, "fan")
        if off < 0:
            return None
        _fan_type_ref = tp  # keeps the type alive while its pointer is cached
        _fan_type = <PyTypeObject*>tp
        _fan_off = off
    n = PyList_GET_SIZE(seq)
    v = slot_get(seq, _fan_off)
    if v is not NULL and type(<object>v) is tuple:
        cache = <tuple>v
        if PyList_GET_SIZE(<list>cache[0]) == n:
            return cache
    hs = []
    gz = bytearray(n)
    fan = None
    one_fan = True
    any_gz = any_dfl = False
    for i in range(n):
        c = <object>PyList_GET_ITEM(seq, i)
        if Py_TYPE(c) is not _slot_type:
            _learn(c)
        h = _handle_of(c)
        hs.append(h)
        gz[i] = 1 if _gzip_of(c) else 0
        any_gz = any_gz or gz[i]
        if isinstance(h, FanoutListener):
            any_dfl = any_dfl or (<FanoutListener>h).deflate
            if fan is None:
                fan = (<FanoutListener>h).fanout
            elif (<FanoutListener>h).fanout is not fan:
                one_fan = False
        else:
            one_fan = False
    if not one_fan or len({id(h) for h in hs}) != n:
        fan = None
    cache = (hs, bytes(gz), fan, any_gz, any_dfl)
    slot_replace(seq, _fan_off, cache)
    return cache


cdef Py_ssize_t _extend(_Batch ob, list seq, bytes payload, int kind, object exclude) except -2:
    """Add ``payload``'s frame to the open batch ``ob`` (opened for the same list as
    ``seq``), for every target but ``exclude``; the broadcast's answer, or -1 if this
    broadcast cannot extend it (the caller then closes it and corks one by one)."""
    cdef FanoutListener ex = None
    cdef FanoutListener d
    cdef bint holder = False
    cdef Py_ssize_t i, n
    cdef list departed = ob.departed
    cdef bytes frame
    if exclude is not None:
        hx = _handle_of(exclude)
        if hx is None or not isinstance(hx, FanoutListener):
            return -1
        ex = <FanoutListener>hx
        if ex._pending is ob:
            holder = True
        else:
            for i in range(PyList_GET_SIZE(departed)):
                if <object>PyList_GET_ITEM(departed, i) is ex:
                    break
            else:
                return -1  # not a target, or closing, or holding a cork of its own
        if holder and not ob.has_room():
            return -1  # many senders in one burst: the list would cost more than it saves
    frame = build_frame(_OP_TEXT, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False)
    if ob.size + PyBytes_GET_SIZE(frame) >= ob.fanout.cork_cap:
        return -1
    # from here on the frame goes out: nothing may return -1 (the caller would send it
    # again). The origin leaves first, so that it cannot get its own frame.
    if holder:
        ex._leave(ob, True)  # (cannot fail: ob is open and has room, checked above)
    n = PyList_GET_SIZE(departed)
    for i in range(n):
        d = <FanoutListener>PyList_GET_ITEM(departed, i)
        if d is not ex:
            d._put(frame, kind)
    # (appended even if a callback above had closed ob: its holders have not written it)
    ob.append(frame)
    ob.fanout.batched += 1
    return ob.count_all - (ex is not None)


cdef Py_ssize_t c_broadcast(object conns, bytes payload, int kind, Py_ssize_t gzip_threshold,
                            object compress, object deflate=None,
                            Py_ssize_t deflate_threshold=DEFLATE_THRESHOLD, object exclude=None) except -1:
    cdef Py_ssize_t i, n = 0, r
    cdef bint big = compress is not None and PyBytes_GET_SIZE(payload) > gzip_threshold
    cdef bint dbig = deflate is not None and PyBytes_GET_SIZE(payload) > deflate_threshold
    cdef bint gz_wanted
    cdef bytes frame = None
    cdef bytes gzframe = None
    cdef bytes dframe = None
    cdef object gz = None
    cdef object d
    cdef list seq
    cdef object c, h
    cdef FanoutListener lst
    cdef FanoutListener ex_lst = None
    cdef _Batch b = None
    cdef _Batch ob
    cdef bint batching, b_ok = True, any_gz = False, any_dfl = False
    cdef Py_ssize_t took = 0, ex_seen = 0, ex_handles = 0
    cdef list hs = None
    cdef const char* gzs = NULL
    cdef tuple cache
    if PyList_Check(conns):
        seq = <list>conns
    else:
        seq = list(conns)
    batching = PyList_GET_SIZE(seq) >= 2
    if batching:
        cache = _member_cache(seq)
        if cache is not None:
            hs = <list>cache[0]
            gzs = PyBytes_AS_STRING(<bytes>cache[1])
            if cache[2] is not None and not (big and cache[3]) and not (dbig and cache[4]):
                r = (<Fanout>cache[2])._defer(seq, hs, payload, kind, exclude)
                if r >= 0:
                    return r
        # the same list as the open batch's (a burst in one room): one append, no loop
        h = <object>PyList_GET_ITEM(hs, 0) if hs is not None else _handle_of(<object>PyList_GET_ITEM(seq, 0))
        if isinstance(h, FanoutListener):
            ob = (<FanoutListener>h).fanout._open
            if (ob is not None and ob.open and not (big and ob.has_gzip) and not (dbig and ob.has_deflate)
                    and _same_items(ob.targets, seq)):
                r = _extend(ob, seq, payload, kind, exclude)
                if r >= 0:
                    return r
                ob.close()  # full or diverged: its listeners write it as they take the new batch below
    for i in range(PyList_GET_SIZE(seq)):
        if i >= PyList_GET_SIZE(seq):  # shrunk by a fallback handle's send_*
            break
        c = <object>PyList_GET_ITEM(seq, i)
        if hs is not None:
            h = <object>PyList_GET_ITEM(hs, i)
        elif Py_TYPE(c) is _slot_type:
            h = _slot(c, _handle_off, "handle")
        else:
            _learn(c)
            h = c.handle
        if c is exclude:
            ex_seen += 1
            if h is not None:
                ex_handles += 1
                if isinstance(h, FanoutListener):
                    # it gets the batch's later frames one by one: what it would get
                    # decides, as for the others, which frames the batch may take
                    ex_lst = <FanoutListener>h
                    if ex_lst.deflate:
                        any_dfl = True
                    if (gzs[i] if hs is not None else _gzip_of(c)):
                        any_gz = True
                else:
                    b_ok = False
            continue
        if h is None:
            b_ok = False
            continue
        n += 1
        gz_wanted = False
        if big or batching:
            gz_wanted = gzs[i] if hs is not None else _gzip_of(c)
            if gz_wanted:
                any_gz = True
                gz_wanted = big
        if gz_wanted:
            b_ok = False
            if gz is None:
                gz = compress(payload)
                if type(gz) is not bytes:
                    gz = bytes(gz)
            if isinstance(h, FanoutListener):
                if gzframe is None:
                    gzframe = build_frame(_OP_BINARY, PyBytes_AS_STRING(gz), PyBytes_GET_SIZE(gz), True, False)
                (<FanoutListener>h)._put(gzframe, kind)
            else:
                h.send_binary(gz, kind)
        elif isinstance(h, FanoutListener):
            lst = <FanoutListener>h
            if lst.deflate:
                any_dfl = True
            if dbig and lst.deflate:
                b_ok = False
                if dframe is None:
                    d = deflate(payload)
                    if type(d) is not bytes:
                        d = bytes(d)
                    dframe = build_frame(_OP_TEXT, PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d), True, True)
                lst._put(dframe, kind)
            else:
                if frame is None:
                    frame = build_frame(_OP_TEXT, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), True, False)
                if not batching:
                    lst._put(frame, kind)
                    continue
                if b is None:
                    b = _Batch.__new__(_Batch)
                    b.first = frame
                    b.size = PyBytes_GET_SIZE(frame)
                    b.open = True
                    b.fanout = lst.fanout
                    b.departed = []
                if lst.fanout is b.fanout:
                    took += lst._put_batch(b, kind)
                else:
                    b_ok = False
                    lst._put(frame, kind)
        else:
            b_ok = False
            h.send_text(payload, kind)
    if b is not None and b_ok and b.open and took and ex_seen <= 1:
        # every target but the excluded one corks exactly this batch: the next broadcast
        # to this list may grow it
        # (a MemberList never changes: the batch keeps it; a copy of any other list, which
        # would also take a reference to, and so write to, every member's Conn)
        b.targets = seq if hs is not None else list(seq)
        if ex_lst is not None:
            b.departed.append(ex_lst)
        b.count_all = n + ex_handles
        b.has_gzip = any_gz
        b.has_deflate = any_dfl
        ob = b.fanout._open
        if ob is not None:
            ob.close()
        b.fanout._open = b
    return n
