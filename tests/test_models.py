"""Bad input is refused on construction, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from flux_async import EditRequest, GenerateRequest, ValidationError


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "a", "count": 0}, "count"),
        ({"prompt": "a", "count": -2}, "count"),
        ({"prompt": "a", "count": True}, "count"),
        ({"prompt": "a", "count": 1.5}, "count"),
        ({"prompt": "a", "size": "big"}, "size"),
        ({"prompt": "a", "size": "0x10"}, "size"),
        ({"prompt": "a", "size": "1024*1024"}, "size"),
        ({"prompt": "a", "model": ""}, "model"),
    ],
)
def test_generate_request_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateRequest(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("url", ["", "ftp://x/y.png", "file:///etc/passwd", "x.png", None])
def test_edit_needs_an_http_image_url(url: Any) -> None:
    with pytest.raises(ValidationError) as info:
        EditRequest("a", image_url=url)
    assert info.value.field == "image_url"


def test_valid_requests() -> None:
    assert GenerateRequest("a", size="16:9", count=2, model="flux-new-model").count == 2
    assert EditRequest("a", image_url="https://x/y.png").action == "edit"
