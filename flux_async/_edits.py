"""``edit``'s image argument: an http(s) URL passed on, or a local image uploaded first.

The edit's own checks run before an upload is spent on a request that would be
refused anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._errors import ValidationError
from ._models import EditRequest
from ._upload import ImageSource, is_remote

__all__ = ["edit_request", "upload_checked"]

Upload = Callable[[ImageSource, str], Awaitable[str]]


async def upload_checked(image: ImageSource, field: str, upload: Upload) -> str:
    """Upload a local ``image`` (``field`` names it in errors); a URL is refused."""
    if is_remote(image):
        raise ValidationError(field, "is already a URL: nothing to upload")
    return await upload(image, field)


async def edit_request(
    prompt: str,
    image: str | ImageSource | None,
    image_url: str | ImageSource | None,
    model: str | None,
    size: str | None,
    upload: Upload,
) -> EditRequest:
    """The ``EditRequest`` of ``edit``; a local image is uploaded once all else is valid."""
    if image is not None and image_url is not None:
        raise ValidationError("image", "give image or image_url, not both")
    field, source = ("image", image) if image is not None else ("image_url", image_url)
    if source is None:
        raise ValidationError("image", "required: an http(s) URL, a file path or bytes")
    if isinstance(source, str) and is_remote(source):
        return EditRequest(prompt, image_url=source, model=model, size=size)
    # The edit's own checks, before an upload is spent on a bad request (the URL
    # is a stand-in: the real one exists only after the upload).
    EditRequest(prompt, image_url="https://upload.invalid/", model=model, size=size)
    url = await upload_checked(source, field, upload)
    return EditRequest(prompt, image_url=url, model=model, size=size)
