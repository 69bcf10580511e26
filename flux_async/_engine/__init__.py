"""The engine: every paid submission and followed task, from its slot to its outcome.

``coordination`` holds the seams to the token's limits (slots, rate gates, the
task directory) and their in-process defaults; ``launch`` walks a request through
its slot and its paid ``submission`` to the ``tracker``, which owns every followed
task (``followed``), its waiters and their ``deadlines``; the ``poller`` asks about
them through the task ``queries``; ``map`` runs many requests; ``recovery`` follows
tasks adopted from a process that died; ``lifecycle`` is the client's state and
background tasks; ``parts`` wires one client's parts together once;
``primitives`` has the cheap asyncio flags and task groups the hot paths use;
``telemetry`` is the seam traces and metrics come through (hooks that do nothing
unless ``flux_async.otel`` is given).

May import: ``_edge`` and ``_core``. Where it needs something of a higher layer
(the client a coordinator serves), it names a ``Protocol`` of its own.
"""
