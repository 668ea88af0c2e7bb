"""The one packet -> frame loop of PyAV decoding, and the one rule that calls a stream ``corrupt``.

Both the sampling decoder (:mod:`~vidret.data.video.pyav_backend`) and the transcoder
(:mod:`~vidret.data.video.prepare`) read frames through :class:`PacketFrames`: packets are demuxed one at a
time, a packet that fails to decode is skipped and counted, and a demuxer error ends the stream (what
decoded before it is kept). :meth:`PacketFrames.verdict` then applies the rule: the stream is ``corrupt``
when no frame decoded, or when more than a tenth of the packets read (and at least 3) failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vidret.data.video.types import DecodeError


class PacketFrames:
    """Decoded frames of one PyAV stream, in decoder output order, with the counts the rule needs."""

    def __init__(self, container: Any, stream: Any, uri: str) -> None:
        self.container, self.stream, self.uri = container, stream, uri
        self.frames = self.packets = self.bad = 0
        self.first_error = ""

    def __iter__(self) -> Iterator[Any]:
        import av

        demux = self.container.demux(self.stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:  # a demuxer error ends the stream; keep what decoded
                self.first_error = self.first_error or f"demux: {exc}"
                return
            self.packets += 1
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                self.bad += 1
                self.first_error = self.first_error or f"decode: {exc}"
                continue
            for frame in decoded:
                self.frames += 1
                yield frame

    def verdict(self) -> None:
        """Raise ``DecodeError(corrupt)`` when no frame decoded or too many packets failed (module
        docstring)."""
        if self.frames == 0 or self.bad > max(2, self.packets // 10):
            raise DecodeError(
                self.uri,
                "corrupt",
                f"{self.bad} of {self.packets} packets failed; first error: {self.first_error}",
            )
