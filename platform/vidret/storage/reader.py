"""A seekable reader over an s3fs file whose reads retry transient errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any


class RetryingReader(io.RawIOBase):
    """Seekable reader over an s3fs file whose reads retry transient errors.

    A failed range request leaves the s3fs file position unchanged, so retrying ``read`` is safe.
    """

    def __init__(self, f: IO[bytes], retry: Callable[[Callable[[], bytes]], bytes], uri: str) -> None:
        super().__init__()
        self._f = f
        self._retry = retry
        self.name = uri

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        n = -1 if size is None else size
        return self._retry(lambda: self._f.read(n))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    @property
    def size(self) -> int:
        return int(self._f.size)  # type: ignore[attr-defined]

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
