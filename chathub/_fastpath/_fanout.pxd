# cython: language_level=3
"""C-level API of chathub._fastpath._fanout, for ``cimport`` by other modules.

    from chathub._fastpath._fanout cimport Fanout, FanoutListener, c_broadcast

A ``FanoutListener`` is a picows ``WSListener`` that holds the send side of one
connection in C fields; ``c_broadcast`` writes one payload to many hub ``Conn``s.
Everything runs on the event loop's thread.
"""

from picows.picows cimport WSListener, WSTransport

cdef class FanoutListener
cdef class _Batch


cdef class Fanout:
    cdef readonly Py_ssize_t max_queue_frames  # queued frames per paused connection
    cdef readonly Py_ssize_t max_queue_bytes   # queued bytes per paused connection
    cdef readonly Py_ssize_t cork_cap          # a cork this big is written at once
    cdef readonly double close_timeout         # seconds a graceful close waits for the client
    cdef readonly object loop                  # None: the running loop
    cdef list _dirty                           # listeners corked in this iteration
    cdef object _scheduled_on                  # loop of the pending flush, or None
    cdef object _flush_cb
    cdef _Batch _open                          # the broadcast batch that may still grow, or None
    cdef _Batch _deferred                      # broadcasts to one member list, not yet handed
                                               # to its listeners (see _defer), or None
    cdef readonly Py_ssize_t batched           # frames appended to an open batch (statistics)
    cdef readonly Py_ssize_t deferred          # broadcasts that took the deferred path (statistics)

    cdef object _get_loop(self)
    # Schedules the end-of-iteration flush (one call_soon per iteration).
    cdef int _schedule(self) except -1
    # Registers a listener for the end-of-iteration flush.
    cdef int _mark(self, FanoutListener lst) except -1
    # Broadcast to a member list whose handles all belong to this fanout, written by the
    # end-of-iteration flush in one pass over the handles; -1: not taken.
    cdef Py_ssize_t _defer(self, list seq, list hs, bytes payload, int kind, object exclude) except -2
    # Hands the deferred broadcasts to their listeners' corks, as broadcast() would have.
    cdef int _settle(self) except -1
    # Gives every member its due: written now (the flush: ``write``) or corked (_settle).
    cdef int _hand_out(self, _Batch d, bint write) except -1


cdef class FanoutListener(WSListener):
    # (the fields a deferred broadcast reads per recipient come first, next to the
    # object's header: one or two cache lines)
    cdef public bint closing
    cdef readonly bint paused
    cdef bint _dirty
    cdef readonly bint direct    # writes send() on the socket while not paused (see attach())
    cdef int _fd                 # the socket, when direct (a copy of the transport's)
    cdef object _pending         # the whole cork by reference (not copied), or None: one
                                 # frame (bytes) or a broadcast batch (_Batch)
    cdef char* _cork             # two or more corked frames, copied (malloc); NULL otherwise
    cdef object _queue           # collections.deque of frames while behind: None or non-empty
    cdef object _proto           # picows' protocol, when this listener stands in for it as
                                 # the uvloop transport's protocol (see _go_direct), or None
    cdef public WSTransport transport
    cdef readonly Fanout fanout
    cdef Py_ssize_t _cork_len
    cdef Py_ssize_t _cork_alloc
    cdef readonly Py_ssize_t queued_bytes
    cdef readonly Py_ssize_t shed
    cdef public bint deflate     # permessage-deflate negotiated: broadcasts may send RSV1 frames

    cpdef attach(self, WSTransport transport)
    cpdef flush(self)
    cpdef close(self, int code, str reason, bint abort=*)
    cpdef release(self)

    cdef Py_ssize_t _corked_size(self) noexcept
    # The one entry point for an encoded frame (header + payload) to this connection:
    # cork, queue (kind 0 = MESSAGE) or drop (kind 1 = EPHEMERAL while behind).
    cdef int _put(self, bytes frame, int kind) except -1
    cdef int _enqueue(self, bytes frame, int kind) except -1
    cdef int _append(self, bytes frame) except -1
    cdef int _put_batch(self, _Batch b, int kind) except -1
    cdef int _leave(self, _Batch b, bint copy) except -1
    cdef int _flush(self) except -1
    # One write of data the caller has taken out of the cork (or a deferred broadcast's).
    cdef int _send_now(self, const char* data, Py_ssize_t n) except -1
    cdef int _write(self, const char* p, Py_ssize_t n) except -1
    cdef int _go_direct(self, WSTransport t) except -1
    cdef void _release(self) noexcept


cdef class _Batch:
    # The frames that broadcasts to one list of connections queued during one loop
    # iteration: every listener of the list holds it as its whole cork (by reference), so
    # the next broadcast to the same list appends its frame here once instead of to each
    # listener. Closed (no more frames) as soon as any of its listeners needs its cork for
    # anything else, writes, pauses or closes, and at the end of the iteration.
    cdef bytes first             # the only frame, by reference, or None
    cdef char* buf               # two or more frames, copied (malloc); NULL otherwise
    cdef Py_ssize_t size
    cdef Py_ssize_t alloc
    cdef bint open
    cdef Fanout fanout
    cdef list targets            # the connections list it was opened for (a MemberList) or a copy
    cdef list departed           # its targets' listeners that do not hold it (excluded
                                 # origins, diverged corks): each further frame by _put
    cdef Py_ssize_t count_all    # targets with a handle, excluded ones too
    cdef bint has_gzip           # a target asked for gzip
    cdef bint has_deflate        # a target negotiated permessage-deflate
    # deferred (Fanout._defer) only:
    cdef list hs                 # the targets' listeners (the member list's cache)
    cdef list frames             # (frame, kind, excluded listener or None) per broadcast
    cdef list exs                # the distinct excluded listeners

    cdef void close(self) noexcept
    cdef bint has_room(self) noexcept
    cdef bint admit(self, FanoutListener lst) except -1
    cdef int append(self, bytes frame) except -1
    cdef bint spares(self, FanoutListener lst) noexcept


# Writes ``payload`` to every connection of ``conns`` (a list or tuple of objects with
# ``handle`` and ``gzip``) but ``exclude``; returns how many had a handle. See ``broadcast``.
cdef Py_ssize_t c_broadcast(object conns, bytes payload, int kind, Py_ssize_t gzip_threshold,
                            object compress, object deflate=*,
                            Py_ssize_t deflate_threshold=*, object exclude=*) except -1
