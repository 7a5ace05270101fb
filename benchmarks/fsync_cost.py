"""CPU of one ``pwrite`` + ``fdatasync`` on this machine's /tmp (what a durable commit
cannot go below): 1 or 5 pages of 4 KiB, appended (the file grows) or overwritten
(preallocated first), 2,000 each, twice.

    python benchmarks/fsync_cost.py
"""

import os
import resource
import tempfile
import time

def run(n, pages, grow):
    fd, path = tempfile.mkstemp(dir="/tmp")
    buf = b"x" * 4096 * pages
    if not grow:
        os.pwrite(fd, b"\0" * (4096 * pages * n), 0); os.fsync(fd)
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
    for i in range(n):
        os.pwrite(fd, buf, i * len(buf)); os.fdatasync(fd)
    r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.perf_counter()
    os.close(fd); os.unlink(path)
    return 1e6*(r1.ru_utime-r0.ru_utime)/n, 1e6*(r1.ru_stime-r0.ru_stime)/n, 1e6*(t1-t0)/n
for rep in range(2):
    for pages in (1, 5):
        for grow in (True, False):
            u, s, w = run(2000, pages, grow)
            print(f"pages {pages} {'growing ' if grow else 'overwrite'}: user {u:4.0f} sys {s:4.0f} wall {w:4.0f} us per write+fdatasync")
r0 = resource.getrusage(resource.RUSAGE_SELF)
fd, path = tempfile.mkstemp(dir="/tmp")
for i in range(2000): os.pwrite(fd, b"x"*4096*5, i*4096*5)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"pwrite only, 5 pages growing: user {1e6*(r1.ru_utime-r0.ru_utime)/2000:.0f} sys {1e6*(r1.ru_stime-r0.ru_stime)/2000:.0f} us")
os.unlink(path)
