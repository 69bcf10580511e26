"""Tiny deterministic PNG images, written with the standard library only.

The local server must hand out real image files (clients download and maybe decode
them), but a test double should not depend on Pillow. A 64x64 RGB picture whose
colours and stripes come from a hash of the file name is enough: same name, same
bytes; different names, visibly different pictures.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

__all__ = ["PNG_SIGNATURE", "SIZE", "render_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Width and height of every generated image, in pixels.
SIZE = 64


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


# The pictures are cached because clients may download the same file several times
# (retries, benchmarks); 256 images of ~2 KiB each is a negligible amount of memory.
@functools.lru_cache(maxsize=256)
def render_png(name: str) -> bytes:
    """A valid 64x64 8-bit RGB PNG derived deterministically from ``name``."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest()
    start = digest[0:3]
    end = digest[3:6]
    stripe_every = 4 + digest[6] % 12
    diagonal = digest[7] & 1

    rows = []
    for y in range(SIZE):
        row = bytearray(b"\x00")  # filter type 0 (None) for every scanline
        for x in range(SIZE):
            t = (x + y) / (2 * SIZE - 2) if diagonal else y / (SIZE - 1)
            stripe = ((x // stripe_every) + (y // stripe_every)) % 2
            for c in range(3):
                value = start[c] + (end[c] - start[c]) * t
                row.append(int(value) ^ (0x20 * stripe))
        rows.append(bytes(row))
    raw = b"".join(rows)

    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )
