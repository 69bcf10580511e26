"""Bad input is refused on construction, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from flux_async import EditRequest, GenerateRequest, ValidationError
from flux_async._core.models import (
    ASPECT_RATIOS,
    MAX_PROMPT_CHARS,
    SIZE_RULES,
    http_url_problem,
    size_problem,
)
from flux_async.testing import _validate as server_rules


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
        ({"prompt": "a", "model": 7}, "model"),
        # sizes the model cannot take
        ({"prompt": "a", "size": "2048x2048"}, "size"),  # no model: flux-dev's rule
        ({"prompt": "a", "size": "16:9"}, "size"),  # flux-dev takes no ratio
        ({"prompt": "a", "model": "flux-kontext-pro", "size": "1024x1024"}, "size"),
        ({"prompt": "a", "model": "flux-2-pro", "size": "1000x1000"}, "size"),
    ],
)
def test_generate_request_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateRequest(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_the_prompt_limit_is_the_local_servers_and_counts_characters() -> None:
    # Two readings of the protocol, written apart, agree on the number.
    assert MAX_PROMPT_CHARS == server_rules.MAX_PROMPT_CHARS == 32_000
    assert len(GenerateRequest("猫" * MAX_PROMPT_CHARS).prompt) == MAX_PROMPT_CHARS
    image = "https://x/y.png"
    assert EditRequest("a" * MAX_PROMPT_CHARS, image_url=image).prompt[0] == "a"
    for build in (lambda p: GenerateRequest(p), lambda p: EditRequest(p, image_url=image)):
        with pytest.raises(ValidationError) as info:
            build("猫" * (MAX_PROMPT_CHARS + 1))
        assert info.value.field == "prompt"
        assert str(info.value) == (
            "prompt: is 32,001 characters long; at most 32,000 are accepted")
    huge = "y" * 10_000_000
    with pytest.raises(ValidationError) as info:
        GenerateRequest(huge)
    assert len(str(info.value)) < 100  # the prompt is never quoted


@pytest.mark.parametrize(
    "model", ["../../x", "flux dev", "flux-dev\x00", "flux-dev\n", "\tflux", ".flux",
              "-flux", "flux/dev", "flux-dev?x=1", "ﬂux", "a" * 65],
)
def test_names_no_model_has_are_refused(model: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateRequest("a", model=model)
    assert info.value.field == "model"
    assert "not a model name" in str(info.value)
    assert str(info.value).isprintable()  # quoted by repr: no control character
    with pytest.raises(ValidationError, match=r"^model: "):
        EditRequest("a", image_url="https://x/y.png", model=model)


@pytest.mark.parametrize(
    "model", ["flux-dev", "flux-pro-1.1-ultra", "flux-2-klein", "flux-3-ultra", "FLUX.3",
              "flux_next", "f" * 64],
)
def test_unknown_but_well_formed_names_pass(model: str) -> None:
    assert GenerateRequest("a", model=model).model == model


@pytest.mark.parametrize("url", ["", "ftp://x/y.png", "file:///etc/passwd", "x.png", None])
def test_edit_needs_an_http_image_url(url: Any) -> None:
    with pytest.raises(ValidationError) as info:
        EditRequest("a", image_url=url)
    assert info.value.field == "image_url"


def test_valid_requests() -> None:
    assert GenerateRequest("a", size="16:9", count=2, model="flux-new-model").count == 2
    assert EditRequest("a", image_url="https://x/y.png").action == "edit"
    assert GenerateRequest("a", size="1440x256").size == "1440x256"
    assert GenerateRequest("a", model="flux-2-klein", size="2048x64").model == "flux-2-klein"
    assert EditRequest("a", image_url="https://x/y.png", model="flux-kontext-max", size="21:9")
    # An edit without a model: which model edits then is not documented, shape only.
    assert EditRequest("a", image_url="https://x/y.png", size="7:3").size == "7:3"


# (model, size, taken?) -- the vendor's size rules, one row per edge.
SIZE_CASES = [
    ("flux-dev", "1024x1024", True),
    ("flux-dev", "256x1440", True),
    ("flux-dev", "224x1024", False),  # below 256
    ("flux-dev", "1472x1024", False),  # above 1440
    ("flux-dev", "1000x1024", False),  # not a multiple of 32
    ("flux-dev", "1:1", False),  # a ratio
    ("flux-pro", "512x768", True),
    ("flux-pro-1.1", "1440x1440", True),
    ("flux-pro-1.1", "1504x1024", False),
    ("flux-2-flex", "64x64", True),
    ("flux-2-pro", "4096x2048", True),  # no documented maximum
    ("flux-2-max", "32x64", False),  # below 64
    ("flux-2-klein", "96x100", False),  # not a multiple of 32
    ("flux-2-pro", "16:9", False),
    ("flux-pro-1.1-ultra", "21:9", True),
    ("flux-pro-1.1-ultra", "1024x1024", False),
    ("flux-kontext-pro", "9:21", True),
    ("flux-kontext-max", "7:5", False),  # not one of the listed ratios
    ("flux-kontext-max", "1024x1024", False),
    ("flux-9-new", "7:5", True),  # unknown model: the service judges
    ("flux-9-new", "3x3", True),
    (None, "1024x1024", True),  # no model: the service's default, flux-dev
    (None, "2048x2048", False),
    (None, "16:9", False),
]


@pytest.mark.parametrize(("model", "size", "taken"), SIZE_CASES)
def test_size_rules(model: str | None, size: str, taken: bool) -> None:
    problem = size_problem(model, size)
    assert (problem is None) is taken
    if problem is not None:
        assert size in problem
        assert (model or "flux-dev") in problem


def test_the_size_table_knows_every_documented_model() -> None:
    documented = {
        "flux-dev", "flux-pro", "flux-pro-1.1", "flux-pro-1.1-ultra", "flux-kontext-pro",
        "flux-kontext-max", "flux-2-flex", "flux-2-pro", "flux-2-max", "flux-2-klein",
    }
    assert set(SIZE_RULES) == documented
    assert len(ASPECT_RATIOS) == 11
    assert str(SIZE_RULES["flux-dev"]) == "WxH with each side 256-1440 and a multiple of 32"
    assert str(SIZE_RULES["flux-2-pro"]) == "WxH with each side >= 64 and a multiple of 32"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com/a.png", True),
        ("http://127.0.0.1:8080/cb?x=1", True),
        ("https://", False),
        ("http:///path", False),
        ("https://host:port/", False),
        ("https://exa mple.com/", False),
        ("https://example.com/\n", False),
        ("HTTPS://example.com/", True),
        ("//example.com/", False),
        ("mailto:a@b.c", False),
        (b"https://example.com/", False),
    ],
)
def test_http_urls(url: object, ok: bool) -> None:
    assert (http_url_problem(url) is None) is ok
