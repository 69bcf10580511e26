"""Without telemetry, nothing of OpenTelemetry is imported, even where it is installed.

A subprocess blocks every import of ``opentelemetry`` (a finder first on the meta
path, as if the package were absent) and records who asked; it then imports the
client's public modules and runs a job against a local server over real sockets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import flux_async

ROOT = Path(flux_async.__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    asked = []

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                asked.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import asyncio

    import flux_async
    import flux_async.sync
    import flux_async.testing
    import flux_async.web
    from flux_async import FluxClient, GenerateRequest
    from flux_async.testing import LocalFluxServer, ServerSettings

    async def job():
        settings = ServerSettings(generation_time=0.05, failure_rate=0.2, seed=4)
        async with LocalFluxServer(settings) as server:
            async with FluxClient(server.token, base_url=server.url, poll_interval=0.05,
                                  submit_rate=None, query_rate=None) as client:
                one = await client.generate("alone")
                many = [o async for o in client.map(
                    GenerateRequest(f"p{i}") for i in range(20))]
                task = await client.submit(GenerateRequest("kept"))
                await client.wait(task)
        return [one.task_id, *(o.task_id for o in many)]

    done = asyncio.run(job())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    report = {"tasks": len(done), "asked": list(asked), "loaded": loaded}
    try:
        import flux_async.otel  # noqa: F401
    except ImportError as exc:
        report["otel"] = str(exc)
    report["asked_then"] = list(asked)
    print(json.dumps(report))
    """
)


def test_a_client_without_telemetry_never_imports_opentelemetry() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["tasks"] == 21  # the job ran
    assert report["loaded"] == []
    # Nothing even asked for it, until flux_async.otel was imported after the job.
    assert report["asked"] == []
    assert report["asked_then"] == ["opentelemetry"]
    assert "pip install 'flux-async[otel]'" in report["otel"]
