"""The host memory that requests' images hold, from their arrival to their job's end.

A request's images are decoded as it arrives and kept at full size until its job ends (the
engine reads them again where it needs their pixels), together with the request's own bytes.
One request may carry 18 images of up to 8192 x 8192 pixels in a 256 MiB message, gigabytes
once decoded, and 32 such may wait in the queue: without a bound, a few clients could take
the host's memory. ``HeldImages`` counts those bytes for the whole server; a request that
would take the count past its capacity is refused as it decodes (RESOURCE_EXHAUSTED, retry
later), unless it is the oldest request the server holds: that one is never refused, however
large (the per-image pixel limit and the message limit bound it), so a request alone is
always taken, and requests that arrive together, each decoding, cannot refuse one another
all (the count then passes the capacity by one request at most). A job's preparation
counts its float32 copies of the images in its request's claim (``Claim.add``: never refused,
the request is taken already): 12 bytes a pixel, four times the decoded images' 3.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from impasto_server.engine.memory import cgroup_memory


class HeldFull(Exception):
    """Taking ``wanted`` more bytes would put the server's held images past ``capacity``."""

    def __init__(self, wanted: int, held: int, capacity: int) -> None:
        self.wanted, self.held, self.capacity = wanted, held, capacity
        super().__init__(
            f"the server holds {held >> 20} MiB of images for the jobs it has taken, and this "
            f"request's would take it past its limit of {capacity >> 20} MiB "
            "(--max-held-mb); retry once some have finished"
        )


def default_capacity(cgroup: str | Path = "/sys/fs/cgroup") -> int:
    """A quarter of the memory this process may use: the host's physical memory, or the
    container's limit where that is lower (a pod limited to 16 GiB on a 512 GiB node); 1 GiB
    where neither can be read, 256 MiB at least."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 4 << 30
    memory = cgroup_memory(Path(cgroup))
    if memory is not None:
        total = min(total, memory[0])
    return max(256 << 20, total // 4)


class HeldImages:
    """The bytes held by every request's images; ``capacity`` 0: no limit (counted still)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._held = 0
        self._claims: dict[Claim, None] = {}  # every claim until its release, oldest first

    @property
    def held(self) -> int:
        return self._held

    def claim(self) -> Claim:
        """One request's share, empty until it takes bytes; its age counts from now."""
        claim = Claim(self)
        with self._lock:
            self._claims[claim] = None
        return claim

    def _take(self, claim: Claim, nbytes: int) -> None:
        with self._lock:
            self._claims.setdefault(claim, None)  # taken again after a release: the newest
            oldest = next(iter(self._claims))
            if self.capacity and claim is not oldest and self._held + nbytes > self.capacity:
                raise HeldFull(claim.bytes + nbytes, self._held - claim.bytes, self.capacity)
            self._held += nbytes
            claim.bytes += nbytes

    def _add(self, claim: Claim, nbytes: int) -> None:
        with self._lock:
            if claim not in self._claims:
                return  # released already: its bytes are no longer counted
            self._held += nbytes
            claim.bytes += nbytes

    def _give(self, claim: Claim) -> None:
        with self._lock:
            self._held -= claim.bytes
            claim.bytes = 0
            self._claims.pop(claim, None)


class Claim:
    """A request's bytes in a ``HeldImages``: ``take`` as it decodes, ``release`` (once or
    more) when its stream ends. Compared by identity."""

    def __init__(self, pool: HeldImages) -> None:
        self._pool = pool
        self.bytes = 0

    def take(self, nbytes: int) -> None:
        """Count ``nbytes`` more; raise HeldFull (counting none) when they do not fit."""
        self._pool._take(self, nbytes)

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` more (fewer, where negative) without refusing them: memory of a
        request already taken (its job's copies of its images)."""
        self._pool._add(self, nbytes)

    def release(self) -> None:
        self._pool._give(self)
