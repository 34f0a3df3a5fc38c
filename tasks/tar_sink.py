"""Writing tar members fast: hand-built ustar headers and sha256 computed while writing.

The bytes are exactly what webdataset's own ``TarWriter`` (``encoder=False, mtime=0``) writes for the same
samples, so shards read back with plain ``webdataset.WebDataset``; ``tests/tasks/test_shards.py`` checks
the bytes against TarWriter's and the sha256. It is kept instead of TarWriter because it is faster:
``benchmarks/bench_shards.py`` times both on the same samples in the same run (TarWriter, which builds a
``TarInfo`` per member, took about twice as long there, hashing and renaming included in both).
"""

from __future__ import annotations

import hashlib
import queue
import tarfile
import threading


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header ``tarfile`` writes for a read-only regular file with mtime 0.

    Built by hand because ``TarInfo.tobuf`` costs ~25 us a member, a third of the writing time for small
    files; names that ustar cannot hold (over 100 bytes, non-ASCII) go through ``tarfile`` (PAX).
    """
    raw_name = name.encode("utf-8")
    if len(raw_name) > 100 or not raw_name.isascii():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "bigdata", "bigdata"
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(512)
    header[0 : len(raw_name)] = raw_name
    header[100:136] = b"0000444\x000000000\x000000000\x00" + b"%011o\x00" % size
    header[136:156] = b"00000000000\x00" + b" " * 8  # mtime 0; checksum counted as spaces
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.POSIX_MAGIC
    header[265:272] = header[297:304] = b"bigdata"
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


class TarSink:
    """Appends tar members to a file; a helper thread hashes the bytes while the main thread writes.

    The layout is what ``tarfile`` (and webdataset's TarWriter) produce with mtime 0: a header, the data
    padded to 512 bytes, two zero blocks, padding to a 10,240-byte record. sha256 releases the GIL on
    large buffers, so hashing overlaps reading and writing instead of adding to them.
    """

    def __init__(self, raw):
        self.raw, self.num_bytes = raw, 0
        self._sha, self._chunks = hashlib.sha256(), queue.SimpleQueue()
        self._hasher = threading.Thread(target=self._hash, name="shard-sha256", daemon=True)
        self._hasher.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._sha.update(chunk)

    def _put(self, data: bytes) -> None:
        self._chunks.put(data)
        self.raw.write(data)
        self.num_bytes += len(data)

    def add(self, name: str, data: bytes) -> None:
        padding = (-len(data)) % tarfile.BLOCKSIZE
        self._put(tar_header(name, len(data)))
        self._put(data)
        if padding:
            self._put(bytes(padding))

    def finish(self) -> str:
        """Write the end-of-archive blocks; returns the hex sha256 of everything written."""
        end = self.num_bytes + 2 * tarfile.BLOCKSIZE
        self._put(bytes(2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE))
        self._chunks.put(None)
        self._hasher.join()
        return self._sha.hexdigest()
