"""The one cattrs converter between the models and the wire's JSON.

Wire names differ from model names (an image's ``image_url`` is ``Image.url``);
the renames live in the hooks here so the models keep Python's names. A
structuring failure becomes one readable ``ProtocolError`` (cattrs'
``transform_error`` lists every bad field) rather than an ExceptionGroup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .errors import ProtocolError
from .models import EditRequest, GenerateRequest, Image, ImageRequest

__all__ = ["structure_images", "unstructure_request"]

_converter = cattrs.Converter()

# A seed comes as an int or, from some services, a string: keep what came.
_Seed = int | str | None


def _structure_seed(value: object, _: object) -> int | str | None:
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    raise TypeError(f"a seed is an int or a string, not {type(value).__name__}")


_converter.register_structure_hook(_Seed, _structure_seed)

_image_fields = make_dict_structure_fn(
    Image,
    _converter,
    url=override(rename="image_url"),
    raw=override(omit=True),  # filled below with the whole wire object
)


def _structure_image(value: object, cls: type[Image]) -> Image:
    if not isinstance(value, Mapping):
        raise TypeError(f"an image is a JSON object, not {type(value).__name__}")
    if not isinstance(value.get("image_url"), str):
        # Checked here so the message names the wire field, not the model's ``url``.
        raise ValueError("image_url missing or not a string")
    return attrs.evolve(_image_fields(value, cls), raw=value)


_converter.register_structure_hook(Image, _structure_image)

# Requests go out without the fields left at None: the service applies its defaults.
# The idempotency key is the client's own: it never goes on the wire.
for _cls in (GenerateRequest, EditRequest):
    _converter.register_unstructure_hook(
        _cls, make_dict_unstructure_fn(_cls, _converter, _cattrs_omit_if_default=True,
                                       idempotency_key=override(omit=True))
    )


def unstructure_request(request: ImageRequest) -> dict[str, Any]:
    """The ``/flux/images`` body fields of a request (without ``async``/``callback_url``)."""
    body: dict[str, Any] = {"action": request.action}
    body.update(_converter.unstructure(request))
    return body


def _why(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, (ValueError, TypeError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def structure_images(data: Any) -> tuple[Image, ...]:
    """A response's ``data`` list as ``Image`` values; unknown fields stay in ``raw``."""
    try:
        return _converter.structure(data, tuple[Image, ...])
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            detail = "; ".join(cattrs.transform_error(exc, path="data", format_exception=_why))
        else:
            detail = str(exc)
        raise ProtocolError(f"unreadable images in the answer: {detail}") from exc
