"""Storage exceptions. Messages name the URI and the reason; they never carry credentials."""

from __future__ import annotations


class StorageError(OSError):
    """A storage operation failed; ``uri`` is the URI it was about (``str(err)`` names it too)."""

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object, file or bucket does not exist. Never retried."""


class StoragePermissionError(StorageError, PermissionError):
    """Access denied (missing credentials, a read-only bucket, a non-writable local directory)."""
