"""What an image is, judged by its first bytes: never by its name or its label.

A file called ``cat.png`` may be an HTML page a browser saved; an answer labelled
``Content-Type: image/png`` may be a CDN's error page or a login form. Uploads
check the file they are given, downloads the body they receive, both with
``sniff_image``: PNG, JPEG, GIF and WebP, the formats the service is known to
take and to produce.
"""

from __future__ import annotations

__all__ = ["IMAGE_FORMATS", "SNIFF_BYTES", "sniff_image"]

#: The formats ``sniff_image`` recognises, for messages.
IMAGE_FORMATS = "PNG, JPEG, WebP or GIF"
#: How many leading bytes ``sniff_image`` needs to decide (WebP's header is 12).
SNIFF_BYTES = 12


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """``(content_type, extension)`` of an image by its magic number, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", ".jpg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif", ".gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return None
