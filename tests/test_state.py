"""The task-state rules, as plain function calls over every shape in flux-api.md."""

from __future__ import annotations

from typing import Any

import pytest

from flux_async import TaskStatus
from flux_async._state import RULES, classify, failure_reason

IMAGE = {"prompt": "cat", "image_url": "https://cdn.example/a.png", "seed": 1}

PENDING_SHAPES: list[dict[str, Any]] = [
    {"id": "t"},
    {"id": "t", "response": None},
    {"id": "t", "response": {}},
    {"id": "t", "response": {"success": True, "task_id": "t"}},
    {"id": "t", "response": {"success": True, "task_id": "t", "data": []}},
    {"id": "t", "status": "processing", "response": {}},
    {"id": "t", "state": "Queued"},
    # success false with nothing final about it: a passing hiccup, not an end
    {"id": "t", "response": {"success": False}},
    {"id": "t", "response": "garbage"},
]

SUCCEEDED_SHAPES: list[dict[str, Any]] = [
    {"id": "t", "finished_at": 2.0, "response": {"success": True, "data": [IMAGE]}},
    {"id": "t", "response": {"success": True, "data": [IMAGE]}},  # finished_at missing
    {"id": "t", "status": "succeeded", "response": {"success": True, "data": [IMAGE]}},
    {"id": "t", "response": {"data": [IMAGE]}},
]

FAILED_SHAPES: list[dict[str, Any]] = [
    {"id": "t", "finished_at": 2.0,
     "response": {"success": False, "error": {"code": "x", "message": "no"}}},
    {"id": "t", "response": {"success": False, "error": {"code": "x", "message": "no"}}},
    {"id": "t", "finished_at": 2.0, "response": {"success": True, "task_id": "t"}},
    {"id": "t", "finished_at": 2.0},
    {"id": "t", "finished_at": 2.0, "response": {"success": False}},
    {"id": "t", "status": "failed", "response": {"success": True, "data": [IMAGE]}},
    {"id": "t", "state": "cancelled"},
    {"id": "t", "status": "succeeded", "response": {"success": True, "data": []}},
]


@pytest.mark.parametrize("task", PENDING_SHAPES)
def test_pending_shapes(task: dict[str, Any]) -> None:
    assert classify(task) is TaskStatus.PENDING


@pytest.mark.parametrize("task", SUCCEEDED_SHAPES)
def test_succeeded_shapes(task: dict[str, Any]) -> None:
    assert classify(task) is TaskStatus.SUCCEEDED


@pytest.mark.parametrize("task", FAILED_SHAPES)
def test_failed_shapes(task: dict[str, Any]) -> None:
    assert classify(task) is TaskStatus.FAILED


def test_a_status_word_outranks_the_structure() -> None:
    running = {"id": "t", "status": "processing", "finished_at": 1.0}
    assert classify(running) is TaskStatus.PENDING


def test_every_rule_is_reachable() -> None:
    from flux_async._state import facts_of

    shapes = PENDING_SHAPES + SUCCEEDED_SHAPES + FAILED_SHAPES
    used = set()
    for task in shapes:
        facts = facts_of(task)
        used.add(next(name for name, matches, _ in RULES if matches(facts)))
    assert used == {name for name, _, _ in RULES}


def test_failure_reason_prefers_the_service_words() -> None:
    assert failure_reason(FAILED_SHAPES[0]) == ("x", "no")
    assert failure_reason({"id": "t", "state": "cancelled"})[0] == "cancelled"
    assert failure_reason({"id": "t", "finished_at": 1.0}) == (
        None,
        "the task finished without images",
    )
