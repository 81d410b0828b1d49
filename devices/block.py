"""Disk image backends: raw image files and in-memory disks, in 512-byte sectors.

A :class:`BlockImage` is what a disk controller sees: ``read(lba, count)``,
``write(lba, data)``, ``flush()`` and a fixed ``sector_count``.  Raw image
files are opened with ``O_RDONLY`` for read-only media and snapshots, and
locked with ``flock`` (exclusive when writable, shared otherwise) so that two
emulators cannot write one image.  ``snapshot=True`` keeps guest writes in an
in-memory overlay of sectors: the file stays byte-identical.

Every failure to open an image is a :class:`BlockImageError` whose one-line
message names the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from typing import Any, Protocol

from .base import StateError, check_state

SECTOR_SIZE = 512


class BlockImageError(ValueError):
    """An image that cannot be opened or an access it cannot serve."""


class BlockBackend(Protocol):
    """What a disk controller needs from its medium (see :class:`BlockImage`)."""

    @property
    def sector_count(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    def read(self, lba: int, count: int) -> bytes: ...

    def write(self, lba: int, data: bytes) -> None: ...

    def flush(self) -> None: ...


class BlockImage:
    """A disk of ``sector_count`` 512-byte sectors backed by a file or by memory.

    Build one with :meth:`open` or :meth:`from_bytes`.
    """

    def __init__(
        self,
        *,
        name: str,
        sector_count: int,
        readonly: bool,
        snapshot: bool = False,
        fd: int | None = None,
        memory: bytearray | None = None,
    ) -> None:
        self.name = name
        self._sector_count = sector_count
        self._readonly = readonly
        self.snapshot = snapshot
        self._fd = fd
        self._memory = memory
        self._overlay: dict[int, bytes] = {}
        self.closed = False
        self.writes_to_backing = 0  # writes that reached the file or memory (not the overlay)

    # -- construction -------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False,
             snapshot: bool = False) -> BlockImage:
        """Open a raw image file.

        A trailing partial sector is accepted for read-only media and
        snapshots (it reads as zero-padded) and refused for writable images,
        whose writes would otherwise grow the file.
        """
        name = os.fspath(path)
        writable = not readonly and not snapshot
        try:
            # O_NONBLOCK: a FIFO given by mistake must not block the open.
            fd = os.open(name, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
                         | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BlockImageError(f"disk image {name!r}: no such file") from None
        except IsADirectoryError:
            raise BlockImageError(f"disk image {name!r}: is a directory") from None
        except ValueError:  # an embedded NUL byte
            raise BlockImageError(f"disk image {name!r}: invalid file name") from None
        except PermissionError:
            how = "read-write" if writable else "reading"
            raise BlockImageError(
                f"disk image {name!r}: permission denied opening it for {how}"
                + (" (use a read-only or snapshot drive)" if writable else "")
            ) from None
        except OSError as exc:
            raise BlockImageError(f"disk image {name!r}: cannot open: {exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise BlockImageError(f"disk image {name!r}: is a directory")
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise BlockImageError(f"disk image {name!r}: not a regular file or block device")
            os.set_blocking(fd, True)
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if writable else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise BlockImageError(
                        f"disk image {name!r}: locked by another process or an unclosed "
                        "Machine (is another qemu-lite using it?)"
                    ) from None
                raise BlockImageError(f"disk image {name!r}: cannot lock: {exc.strerror}") from None
            try:
                size = os.lseek(fd, 0, os.SEEK_END)
            except OSError as exc:
                raise BlockImageError(f"disk image {name!r}: unreadable: {exc.strerror}") from None
            if size == 0:
                raise BlockImageError(f"disk image {name!r}: file is empty")
            if size < SECTOR_SIZE:
                raise BlockImageError(
                    f"disk image {name!r}: only {size} bytes, smaller than one "
                    f"{SECTOR_SIZE}-byte sector"
                )
            if writable and size % SECTOR_SIZE:
                raise BlockImageError(
                    f"disk image {name!r}: {size} bytes is not a multiple of {SECTOR_SIZE} "
                    "(pad it with truncate -s, or use a read-only or snapshot drive)"
                )
            try:
                os.pread(fd, 1, 0)
            except OSError as exc:
                raise BlockImageError(f"disk image {name!r}: unreadable: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(
            name=name,
            sector_count=-(-size // SECTOR_SIZE),
            readonly=readonly,
            snapshot=snapshot,
            fd=fd,
        )

    @classmethod
    def from_bytes(cls, data: bytes, readonly: bool = False) -> BlockImage:
        """An in-memory disk holding a copy of ``data`` (zero-padded to whole sectors)."""
        if not data:
            raise BlockImageError("in-memory disk: no data")
        memory = bytearray(data)
        memory.extend(bytes(-len(memory) % SECTOR_SIZE))
        return cls(
            name="<memory>",
            sector_count=len(memory) // SECTOR_SIZE,
            readonly=readonly,
            memory=memory,
        )

    # -- properties ---------------------------------------------------------

    @property
    def sector_count(self) -> int:
        return self._sector_count

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def size(self) -> int:
        """Capacity in bytes (whole sectors)."""
        return self._sector_count * SECTOR_SIZE

    # -- I/O ------------------------------------------------------------------

    def _check(self, lba: int, count: int) -> None:
        if self.closed:
            raise BlockImageError(f"disk image {self.name!r}: closed")
        if lba < 0 or count < 0 or lba + count > self._sector_count:
            raise BlockImageError(
                f"disk image {self.name!r}: sectors {lba}..{lba + count - 1} beyond "
                f"the last sector {self._sector_count - 1}"
            )

    def _read_backing(self, lba: int, count: int) -> bytes:
        offset = lba * SECTOR_SIZE
        length = count * SECTOR_SIZE
        if self._memory is not None:
            return bytes(self._memory[offset:offset + length])
        assert self._fd is not None
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # the zero-padded trailing partial sector
            data += bytes(length - len(data))
        return data

    def read(self, lba: int, count: int) -> bytes:
        """Return ``count`` sectors starting at sector ``lba``."""
        self._check(lba, count)
        if not self._overlay:
            return self._read_backing(lba, count)
        out = bytearray()
        run_start = lba
        for sector in range(lba, lba + count):
            patched = self._overlay.get(sector)
            if patched is not None:
                if run_start < sector:
                    out += self._read_backing(run_start, sector - run_start)
                out += patched
                run_start = sector + 1
        if run_start < lba + count:
            out += self._read_backing(run_start, lba + count - run_start)
        return bytes(out)

    def write(self, lba: int, data: bytes) -> None:
        """Write whole sectors starting at sector ``lba``; read-only media raise."""
        if len(data) % SECTOR_SIZE:
            raise BlockImageError(
                f"disk image {self.name!r}: write of {len(data)} bytes is not whole sectors"
            )
        count = len(data) // SECTOR_SIZE
        self._check(lba, count)
        if self._readonly:
            raise BlockImageError(f"disk image {self.name!r}: read-only medium")
        if self.snapshot:
            view = memoryview(data)
            for i in range(count):
                self._overlay[lba + i] = bytes(view[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE])
            return
        offset = lba * SECTOR_SIZE
        self.writes_to_backing += 1
        if self._memory is not None:
            self._memory[offset:offset + len(data)] = data
            return
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    # -- saved state ----------------------------------------------------------------

    STATE_VERSION = 1

    def content_hash(self) -> str:
        """SHA-256 of the backing file or memory, as the guest's reads see it without
        the overlay: what a saved state of this disk depends on."""
        digest = hashlib.sha256()
        chunk = 1 << 20
        for lba in range(0, self._sector_count, chunk // SECTOR_SIZE):
            digest.update(self._read_backing(lba, min(chunk // SECTOR_SIZE,
                                                      self._sector_count - lba)))
        return digest.hexdigest()

    def save_state(self, *, with_hash: bool = True) -> dict[str, Any]:
        """The overlay of a snapshot disk (its sectors), and what identifies the backing."""
        return {"version": self.STATE_VERSION, "name": self.name, "size": self.size,
                "snapshot": self.snapshot, "readonly": self._readonly,
                "sha256": self.content_hash() if with_hash else None,
                "overlay": [[lba, data] for lba, data in sorted(self._overlay.items())]}

    def load_state(self, state: dict[str, Any], *, check_hash: bool = True) -> None:
        check_state(state, f"disk {self.name!r}", (self.STATE_VERSION,))
        if state["size"] != self.size:
            raise StateError(f"disk {self.name!r} is {self.size} bytes; the saved state's "
                             f"{state['name']!r} was {state['size']}")
        if check_hash and state["sha256"] is not None and state["sha256"] != self.content_hash():
            raise StateError(f"disk {self.name!r} differs from the image the state was saved "
                             f"with ({state['name']!r}): content hash mismatch")
        if state["overlay"] and not self.snapshot:
            raise StateError(f"disk {self.name!r}: the saved state holds snapshot writes; "
                             "open the disk with snapshot (--snapshot) to restore them")
        overlay = {}
        for lba, data in state["overlay"]:
            if not 0 <= lba < self._sector_count or len(data) != SECTOR_SIZE:
                raise StateError(f"disk {self.name!r}: saved sector {lba} is out of range")
            overlay[int(lba)] = bytes(data)
        self._overlay = overlay

    def flush(self) -> None:
        """Make completed writes durable (a no-op for memory and snapshots)."""
        if self.closed or self._fd is None or self._readonly or self.snapshot:
            return
        os.fsync(self._fd)

    def close(self) -> None:
        """Flush, release the lock and close the file; idempotent."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            if self._fd is not None:
                os.close(self._fd)  # also releases the flock
                self._fd = None
            self._overlay.clear()

    def __enter__(self) -> BlockImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "snapshot" if self.snapshot else "ro" if self._readonly else "rw"
        return f"<BlockImage {self.name!r} {self._sector_count} sectors {mode}>"
