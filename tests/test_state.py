"""The task-state rules, as plain function calls over every shape in flux-api.md."""

from __future__ import annotations

from typing import Any

import pytest

from flux_async import TaskStatus
from flux_async._core.state import RULES, classify, failure_reason

IMAGE = {"prompt": "cat", "image_url": "https://cdn.example/a.png", "seed": 1}

PENDING_SHAPES: list[dict[str, Any]] = [
    {"id": "t"},
    {"id": "t", "response": None},
    {"id": "t", "response": {}},
    {"id": "t", "response": {"success": True, "task_id": "t"}},
    {"id": "t", "response": {"success": True, "task_id": "t", "data": []}},
    {"id": "t", "status": "processing", "response": {}},
    {"id": "t", "state": "Queued"},
    # success false with nothing final about it: read as running (see RULES: the
    # other reading could tell a caller "failed" about a task that is then billed)
    {"id": "t", "response": {"success": False}},
    {"id": "t", "finished_at": None, "elapsed": None, "response": {"success": False}},
    {"id": "t", "response": "garbage"},
    # the vendor's task object while pending: null timestamps, an empty state
    {"id": "t", "type": "images", "created_at": 1.0, "started_at": 1.1, "finished_at": None,
     "elapsed": None, "state": "", "request": {"action": "generate"}, "trace_id": "tr"},
    {"id": "t", "finished_at": None, "state": "", "response": {"success": True, "task_id": "t"}},
    {"id": "t", "finished_at": "", "response": None},
]

SUCCEEDED_SHAPES: list[dict[str, Any]] = [
    {"id": "t", "finished_at": 2.0, "response": {"success": True, "data": [IMAGE]}},
    {"id": "t", "response": {"success": True, "data": [IMAGE]}},  # finished_at missing
    {"id": "t", "status": "succeeded", "response": {"success": True, "data": [IMAGE]}},
    {"id": "t", "response": {"data": [IMAGE]}},
    # the images are there though ``state`` still reads as pending: a paid result
    {"id": "t", "state": "", "finished_at": 2.0, "response": {"success": True, "data": [IMAGE]}},
    {"id": "t", "state": "succeeded", "elapsed": 9.6, "response": {"data": [IMAGE]}},
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
    # an error object is final with or without success: false beside it
    {"id": "t", "response": {"error": {"code": "x", "message": "no"}}},
    {"id": "t", "state": "", "response": {"success": False, "error": {"code": "x"}}},
    {"id": "t", "state": "failed", "finished_at": None},
    # elapsed without finished_at still says it ended
    {"id": "t", "elapsed": 9.6, "response": {"success": False}},
    {"id": "t", "elapsed": 9.6, "response": {}},
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
    from flux_async._core.state import facts_of

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


def test_null_timestamps_are_not_finished() -> None:
    from flux_async._core.state import facts_of

    assert not facts_of({"id": "t", "finished_at": None, "elapsed": None}).finished
    assert facts_of({"id": "t", "finished_at": 1.0}).finished
    assert facts_of({"id": "t", "elapsed": 0.5}).finished
    assert facts_of({"id": "t", "response": {"finished_at": 3.0}}).finished


def test_an_empty_state_is_no_word() -> None:
    from flux_async._core.state import facts_of

    assert facts_of({"id": "t", "state": ""}).word is None
    assert facts_of({"id": "t", "state": "  "}).word is None
    assert facts_of({"id": "t", "state": "Succeeded"}).word == "succeeded"


def test_a_body_known_to_be_final_needs_no_timestamp() -> None:
    bare = {"id": "t", "response": {"success": False}}
    assert classify(bare) is TaskStatus.PENDING
    assert classify(bare, ended=True) is TaskStatus.FAILED
    assert classify({"id": "t", "response": {}}, ended=True) is TaskStatus.FAILED
