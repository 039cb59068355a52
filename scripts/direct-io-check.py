#!/usr/bin/env python3
"""System time per durable image file, buffered against O_DIRECT (Linux).

    python3 scripts/direct-io-check.py buffered|direct [FILES] [THREADS] [DIR]

Each thread creates files of 239,237 bytes (the overhead benchmark's image), writes them
(O_DIRECT: the whole 4 KiB blocks from a page-aligned buffer, then the file is cut to its length),
fsyncs and closes them. Prints the process's user and system time per file. DIR defaults to
./direct-io-check (on the file system to measure); the files are left for the caller to remove.
"""
import mmap
import os
import resource
import sys
import threading
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "buffered"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 16
root = sys.argv[4] if len(sys.argv) > 4 else "direct-io-check"
d = os.path.join(root, mode)
os.makedirs(d, exist_ok=True)
size = 239237
data = os.urandom(size)
padded = (size + 4095) // 4096 * 4096
buf = mmap.mmap(-1, padded)  # page aligned
buf[:size] = data


def work(t):
    for i in range(t, n, threads):
        p = f"{d}/f{i}.png"
        if mode == "direct":
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
            os.write(fd, buf)
            os.ftruncate(fd, size)
        else:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
        os.fsync(fd)
        os.close(fd)


t0 = time.time()
r0 = resource.getrusage(resource.RUSAGE_SELF)
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
r1 = resource.getrusage(resource.RUSAGE_SELF)
w = time.time() - t0
print(
    f"{mode}: {n} files, {threads} threads, wall {w:.2f} s, {n / w:.0f} files/s, "
    f"user {(r1.ru_utime - r0.ru_utime) / n * 1000:.3f} ms/file, "
    f"sys {(r1.ru_stime - r0.ru_stime) / n * 1000:.3f} ms/file"
)
