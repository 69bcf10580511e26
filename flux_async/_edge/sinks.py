"""Where the bytes of one download go: memory, or a temporary file renamed into place.

A ``Part`` writes to ``.flux-*.part`` in the target directory (same file system,
so the final rename is atomic), fsyncs it, then links or renames it to the final
name, whose extension comes from the body's format (judged by its first bytes).
Whatever fails, and however (a full disk fails the write, then the flush inside
``close`` again), the temporary file is removed and the failure is a ``DownloadError`` "could not
save" with the ``OSError`` as its cause. ``FileExistsError`` (the final name is
taken and ``overwrite`` is off) passes through as it is.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import IO

import anyio

from .._core.errors import DownloadError

__all__ = ["Memory", "Part", "Sink"]


def _could_not_save(url: str, where: Path | None, exc: OSError) -> DownloadError:
    error = DownloadError(f"could not save {url} to {where}: {exc.strerror or exc}", url=url)
    error.__cause__ = exc
    return error


class Sink:
    """Where the bytes of one attempt go: memory, or a temporary file."""

    def start(self, url: str, extension: str) -> None:
        """A new attempt begins; ``extension`` (``.png``...) is the body's format's."""
        raise NotImplementedError

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class Memory(Sink):
    def __init__(self) -> None:
        self.data = bytearray()

    def start(self, url: str, extension: str) -> None:
        self.data.clear()

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    def discard(self) -> None:
        self.data.clear()


class Part(Sink):
    """A temporary file in the target directory, removed unless committed."""

    def __init__(self, directory: Path, name: str, overwrite: bool) -> None:
        self.directory = directory
        self.name = name
        self.overwrite = overwrite
        self.url = ""
        self.final: Path | None = None
        self.path: Path | None = None
        self._file: IO[bytes] | None = None

    def start(self, url: str, extension: str) -> None:
        self.discard()  # a retry starts over
        self.url = url
        self.final = self.directory / (self.name + extension)
        if not self.overwrite and self.final.exists():
            raise FileExistsError(f"{self.final} exists (pass overwrite=True to replace it)")
        try:
            fd, name = tempfile.mkstemp(dir=self.directory, prefix=".flux-", suffix=".part")
        except OSError as exc:
            raise _could_not_save(url, self.final, exc) from exc
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(chunk)
        except OSError as exc:  # disk full, quota: retrying the GET will not help
            raise _could_not_save(self.url, self.final, exc) from exc

    def discard(self) -> None:
        """Close and remove the temporary file; never raises (it runs in cleanups).

        Closing flushes, and on a full disk that fails again: the file must go
        all the same, so a failed close does not skip the unlink.
        """
        file, self._file = self._file, None
        path, self.path = self.path, None
        try:
            if file is not None:
                with suppress(OSError):
                    file.close()
        finally:
            if path is not None:
                with suppress(OSError):
                    path.unlink()

    async def commit(self) -> Path:
        file, path, final = self._file, self.path, self.final
        assert file is not None
        assert path is not None
        assert final is not None
        try:
            file.flush()
            # Durable before visible: a crash must not leave an empty file under the final name.
            await anyio.to_thread.run_sync(os.fsync, file.fileno())
            self._file = None
            file.close()
            if self.overwrite:
                os.replace(path, final)
            else:
                self._link(path, final)
        except FileExistsError:
            self.discard()
            raise
        except OSError as exc:
            self.discard()
            raise _could_not_save(self.url, final, exc) from exc
        self.discard()
        return final

    @staticmethod
    def _link(path: Path, final: Path) -> None:
        try:
            # link() fails if the name was taken meanwhile: no silent clobbering.
            os.link(path, final)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links
            if final.exists():
                raise FileExistsError(f"{final} exists") from None
            os.replace(path, final)
