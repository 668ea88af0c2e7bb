"""One I/O API over local paths, ``file://`` URIs and ``s3://`` (s3fs), with atomic writes and retries.

Credentials come from ``StorageConfig`` or, when it has none, from the standard AWS environment variables
(resolved by botocore in the process that uses them). They never appear in logs, error messages,
``repr(Storage)`` or, when they come from the environment, in the pickled state. Credentials given in the
config travel with it when a Storage is pickled (a Ray worker needs them to connect).

A Storage holds one lazily built s3fs filesystem; pickling drops it and the receiving process builds its
own. The s3fs client has botocore's and s3fs's own retries switched off so that ``max_retries`` (with
exponential backoff from ``retry_backoff_s``) is the only retry policy; see ``vidret.storage.retry``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from vidret.config import StorageConfig
from vidret.storage.errors import StorageError, StorageNotFoundError
from vidret.storage.localfs import first_non_directory, new_file_mode, raise_error, unlink_if_present
from vidret.storage.reader import RetryingReader
from vidret.storage.retry import call_with_retries, translate
from vidret.storage.uri import Location, join, parse_uri

if TYPE_CHECKING:
    import pyarrow.fs
    import s3fs

logger = logging.getLogger("vidret.storage")

T = TypeVar("T")

_READ_BLOCK_BYTES = 8 * 2**20  # s3fs range-request size for streamed reads
_COPY_CHUNK_BYTES = 2**20
_ENV_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class Storage:
    """Read and write files by URI: plain paths, ``file:///abs`` and ``s3://bucket/key``.

    Local writes are atomic (temp file in the same directory, fsync, ``os.replace``); S3 writes are a single
    PUT (multipart above 100 MiB, which also appears only when complete). S3 calls retry transient errors
    ``cfg.max_retries`` times; failures raise ``StorageError`` (``StorageNotFoundError`` for missing files)
    naming the URI. Malformed URIs raise ``ValueError``.
    """

    def __init__(self, cfg: StorageConfig | None = None) -> None:
        cfg = StorageConfig() if cfg is None else cfg
        if not isinstance(cfg, StorageConfig):
            raise TypeError(f"Storage expects a StorageConfig, got {type(cfg).__name__}")
        if bool(cfg.access_key_id) != bool(cfg.secret_access_key):
            raise ValueError(
                "storage: access_key_id and secret_access_key must be given together (or neither, to use "
                "the AWS environment variables)"
            )
        self._cfg = cfg
        self._lock = threading.Lock()
        self._fs: s3fs.S3FileSystem | None = None
        self._arrow_s3: s3fs.S3FileSystem | None = None
        self._pid = os.getpid()

    # -- construction, pickling, repr ------------------------------------------------------------------

    @property
    def config(self) -> StorageConfig:
        return self._cfg

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self._cfg}  # the live filesystems and the lock stay behind

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"])  # type: ignore[misc]

    def __repr__(self) -> str:
        endpoint = self._endpoint()
        if endpoint:
            endpoint = re.sub(r"//[^/@]*@", "//***@", endpoint)  # userinfo in an endpoint URL
        if self._cfg.anonymous:
            creds = "anonymous"
        elif self._cfg.access_key_id:
            creds = "config"
        else:
            creds = "environment"
        return f"Storage(endpoint_url={endpoint!r}, region={self._region()!r}, credentials={creds})"

    def _endpoint(self) -> str | None:
        env = os.environ
        return self._cfg.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None

    def _region(self) -> str | None:
        env = os.environ
        return self._cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None

    def _secrets(self) -> tuple[str, ...]:
        cfg = self._cfg
        found = [cfg.access_key_id, cfg.secret_access_key, cfg.session_token]
        found += [os.environ.get(k) for k in _ENV_SECRETS]
        return tuple(s for s in found if s)

    def _build_s3fs(self, botocore_attempts: int) -> s3fs.S3FileSystem:
        import s3fs

        cfg = self._cfg
        kwargs: dict[str, Any] = {
            "anon": cfg.anonymous,
            "endpoint_url": self._endpoint(),
            "client_kwargs": {"region_name": self._region()} if self._region() else {},
            "config_kwargs": {"retries": {"total_max_attempts": botocore_attempts, "mode": "standard"}},
            "skip_instance_cache": True,  # one client per Storage: configs never leak between instances
            "use_listings_cache": False,  # other processes write the same prefixes
            "default_block_size": _READ_BLOCK_BYTES,
        }
        if cfg.anonymous and cfg.access_key_id:
            logger.warning("storage: anonymous=True, so the configured credentials are ignored")
        elif cfg.access_key_id:
            kwargs.update(key=cfg.access_key_id, secret=cfg.secret_access_key, token=cfg.session_token)
        return s3fs.S3FileSystem(**kwargs)

    def _s3(self) -> s3fs.S3FileSystem:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's event loop and sockets are not ours
                self._fs, self._arrow_s3, self._pid = None, None, os.getpid()
            if self._fs is None:
                self._fs = self._build_s3fs(botocore_attempts=1)
                self._fs.retries = 1  # s3fs's own retry loop: one attempt; ours does the retrying
            return self._fs

    def _retry(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        return call_with_retries(
            fn,
            op=op,
            uri=uri,
            max_retries=self._cfg.max_retries,
            backoff_s=self._cfg.retry_backoff_s,
            secrets=self._secrets(),
        )

    def _local_error(self, exc: OSError, op: str, uri: str) -> StorageError:
        return translate(exc, op=op, uri=uri, secrets=self._secrets())

    # -- reading ---------------------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        """The whole content of the file at ``uri``."""
        loc = parse_uri(uri, need_key=True)
        if loc.is_s3:
            data: bytes = self._retry("read", uri, lambda: self._s3().cat_file(loc.path))
            return data
        try:
            with open(loc.path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._local_error(exc, "read", uri) from exc

    def read_text(self, uri: str) -> str:
        """The file at ``uri`` decoded as UTF-8; ValueError naming the URI if it is not valid UTF-8."""
        data = self.read_bytes(uri)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{uri}: expected UTF-8 text, byte {exc.start} is invalid ({exc.reason})"
            ) from exc

    def open_read(self, uri: str) -> BinaryIO:
        """A seekable binary file object (a context manager); S3 objects are streamed by range requests."""
        loc = parse_uri(uri, need_key=True)
        if not loc.is_s3:
            try:
                return open(loc.path, "rb")
            except OSError as exc:
                raise self._local_error(exc, "open", uri) from exc
        raw = self._retry("open", uri, lambda: self._s3().open(loc.path, "rb"))
        return RetryingReader(raw, lambda fn: self._retry("read", uri, fn), uri)  # type: ignore[return-value]

    # -- writing ---------------------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` to ``uri`` atomically: readers see the old content or all of the new."""
        loc = parse_uri(uri, need_key=True)
        if loc.is_s3:
            self._retry("write", uri, lambda: self._s3().pipe_file(loc.path, bytes(data)))
            return
        with self.atomic_write(uri) as f:
            f.write(data)

    def write_text(self, uri: str, text: str) -> None:
        """Write ``text`` as UTF-8 to ``uri`` atomically."""
        self.write_bytes(uri, text.encode("utf-8"))

    @contextlib.contextmanager
    def atomic_write(self, uri: str) -> Iterator[BinaryIO]:
        """Yield a binary file; its content appears at ``uri`` only when the block exits without error.

        Locally the data goes to a hidden temp file beside the target (parent directories are created),
        then fsync and ``os.replace``. For S3 it is buffered in a local temp file and uploaded in one PUT
        (multipart above 100 MiB). An exception in the block leaves the old file, or nothing, at ``uri``.
        """
        loc = parse_uri(uri, need_key=True)
        if loc.is_s3:
            with tempfile.NamedTemporaryFile(prefix="vidret-upload-", suffix=".part") as buf:
                yield buf  # type: ignore[misc]
                buf.flush()
                self._retry("write", uri, lambda: self._s3().put_file(buf.name, loc.path))
            return
        yield from self._local_atomic_write(loc)

    def _local_atomic_write(self, loc: Location) -> Iterator[BinaryIO]:
        path = loc.path
        parent = os.path.dirname(os.path.abspath(path))
        self._local_makedirs(parent, loc.uri)
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".part")
        except OSError as exc:
            raise self._local_error(exc, "write", loc.uri) from exc
        f = os.fdopen(fd, "wb")
        try:
            yield f
        except BaseException:
            f.close()
            unlink_if_present(tmp)
            raise
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, new_file_mode(path))
            os.replace(tmp, path)
        except OSError as exc:
            f.close()
            unlink_if_present(tmp)
            raise self._local_error(exc, "write", loc.uri) from exc

    def _local_makedirs(self, directory: str, uri: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            blocker = first_non_directory(directory)
            raise StorageError(
                f"cannot write {uri}: {blocker or directory} exists and is not a directory", uri
            ) from exc
        except OSError as exc:
            raise self._local_error(exc, "create directories for", uri) from exc

    def makedirs(self, uri: str) -> None:
        """Create the local directory ``uri`` and its parents; a no-op for S3 (prefixes need no creation)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            self._local_makedirs(loc.path, uri)

    # -- listing and management ------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        """Whether a file, directory, S3 object, prefix or bucket exists at ``uri``."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            return os.path.exists(loc.path)
        try:
            self._retry("stat", uri, lambda: self._s3().info(loc.path))
        except StorageNotFoundError:
            return False
        return True

    def list(self, prefix_uri: str) -> list[str]:
        """Sorted URIs of all files below ``prefix_uri`` (recursive), in the form of ``prefix_uri``.

        A prefix that is itself a file lists as ``[prefix_uri]``; a missing local directory or an empty S3
        prefix gives ``[]``; a missing bucket raises StorageNotFoundError.
        """
        loc = parse_uri(prefix_uri)
        if loc.is_s3:
            keys = self._retry("list", prefix_uri, lambda: self._s3().find(loc.path))
            return sorted(f"s3://{k}" for k in keys)
        if os.path.isfile(loc.path):
            return [prefix_uri]
        if not os.path.isdir(loc.path):
            return []
        out: list[str] = []
        try:
            for root, _dirs, files in os.walk(loc.path, onerror=raise_error):
                rel = os.path.relpath(root, loc.path)
                out += [
                    join(prefix_uri, name) if rel == "." else join(prefix_uri, rel, name) for name in files
                ]
        except OSError as exc:
            raise self._local_error(exc, "list", prefix_uri) from exc
        return sorted(out)

    def copy(self, src: str, dst: str) -> None:
        """Copy one file; the destination is written atomically. S3 to S3 is a server-side copy."""
        s, d = parse_uri(src, need_key=True), parse_uri(dst, need_key=True)
        what = f"{src} -> {dst}"
        if s.is_s3 and d.is_s3:
            self._retry("copy", what, lambda: self._s3().copy(s.path, d.path))
        elif d.is_s3:
            if not os.path.isfile(s.path):
                raise StorageNotFoundError(f"not found: {src} (copy to {dst}: no such file)", src)
            self._retry("upload", what, lambda: self._s3().put_file(s.path, d.path))
        else:
            with self.open_read(src) as r, self.atomic_write(dst) as w:
                shutil.copyfileobj(r, w, _COPY_CHUNK_BYTES)

    def delete(self, uri: str, *, recursive: bool = False, missing_ok: bool = False) -> None:
        """Delete the file at ``uri``; with ``recursive``, a directory or S3 prefix and everything below it.

        A missing ``uri`` raises StorageNotFoundError unless ``missing_ok``.
        """
        loc = parse_uri(uri, need_key=True)  # never a whole bucket
        if loc.is_s3:
            if not self.exists(uri):
                if missing_ok:
                    return
                raise StorageNotFoundError(f"not found: {uri} (delete)", uri)
            if recursive:
                self._retry("delete", uri, lambda: self._s3().rm(loc.path, recursive=True))
            else:
                self._retry("delete", uri, lambda: self._s3().rm_file(loc.path))
            return
        try:
            if recursive and os.path.isdir(loc.path):
                shutil.rmtree(loc.path)
            else:
                os.remove(loc.path)
        except FileNotFoundError as exc:
            if not missing_ok:
                raise self._local_error(exc, "delete", uri) from exc
        except OSError as exc:
            raise self._local_error(exc, "delete", uri) from exc

    # -- pyarrow ---------------------------------------------------------------------------------------

    def pyarrow_fs(self, uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
        """``(filesystem, path)`` for pyarrow.parquet / Ray Data (``filesystem=``, ``path``).

        Local: ``LocalFileSystem`` and the absolute path. S3: a ``PyFileSystem`` over this Storage's settings
        and ``bucket/key``; its client retries transient errors in botocore (``max_retries`` times), since
        pyarrow calls it directly.
        """
        import pyarrow.fs

        loc = parse_uri(uri)
        if not loc.is_s3:
            return pyarrow.fs.LocalFileSystem(), os.path.abspath(loc.path)
        with self._lock:
            if self._arrow_s3 is None or self._pid != os.getpid():
                self._arrow_s3 = self._build_s3fs(botocore_attempts=self._cfg.max_retries + 1)
            fs = self._arrow_s3
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), loc.path
