"""The single-task commands: ``generate``, ``edit``, ``task get``, ``task wait``, ``serve``;
and ``gallery``, which rebuilds a batch's page from its manifest."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from flux_async import (
    EditRequest,
    FluxClient,
    FluxError,
    GenerateRequest,
    ImageRequest,
    ImageResult,
    LocalImage,
    Task,
    TaskStatus,
)

from ._args import API_KEY_ENV, BASE_URL_ENV, DOWNLOAD_ALLOW_ENV, UsageError, check_out_dir
from ._connect import connect, service_name
from ._gallery import GALLERY_NAME, render, write_page
from ._ledger import MANIFEST_NAME, Record
from ._output import error, print_json, result_json, show_task, task_json, warn
from ._progress import spinner
from ._stop import Stop

__all__ = ["edit", "gallery", "generate", "serve", "task_get", "task_wait"]


def generate(args: argparse.Namespace) -> int:
    request = GenerateRequest(args.prompt, model=args.model, size=args.size, count=args.count)
    if not args.no_download:
        check_out_dir(args.out)
    return asyncio.run(_one(args, request))


def edit(args: argparse.Namespace) -> int:
    source = args.image if args.image is not None else args.image_url
    if not args.no_download:
        check_out_dir(args.out)
    if args.image_url is not None or source.startswith(("http://", "https://")):
        request = EditRequest(args.prompt, image_url=source, model=args.model, size=args.size)
        return asyncio.run(_one(args, request))
    # A local file: checked now (a bad one is exit status 2 before anything starts),
    # uploaded once connected, since --local's server only lives that long.
    image = LocalImage.load(source)
    GenerateRequest(args.prompt, model=args.model, size=args.size)  # an edit's same checks

    async def upload(client: FluxClient) -> ImageRequest:
        url = await client.upload(image)
        return EditRequest(args.prompt, image_url=url, model=args.model, size=args.size)

    return asyncio.run(_one(args, upload))


async def _one(
    args: argparse.Namespace,
    request: ImageRequest | Callable[[FluxClient], Awaitable[ImageRequest]],
) -> int:
    """Submit, wait, download, print: the shared body of ``generate`` and ``edit``."""
    stop = Stop()
    stop.install()
    task: Task | None = None
    result: ImageResult | None = None
    files: list[Path] | None = None
    try:
        async with connect(args) as client:
            with stop.scope():
                if callable(request):  # a local image to upload first
                    with spinner("uploading the image", quiet=args.quiet):
                        request = await request(client)
                with spinner(f"submitting to {service_name(args)}", quiet=args.quiet):
                    # submit + wait rather than generate(): the task id is known
                    # early, so an interrupted wait can say how to pick it up.
                    task = await client.submit(request)
                with spinner(f"waiting for task {task.id}", quiet=args.quiet):
                    result = await client.wait(task)
                if not args.no_download:
                    with spinner("downloading", quiet=args.quiet):
                        files = await client.download(result, args.out)
    finally:
        stop.uninstall()
    if result is None:
        if task is not None and not args.local:
            warn(f"interrupted; task {task.id} may still finish: "
                 f"flux-async task wait {task.id} --out DIR fetches its images")
        else:
            warn("interrupted")
        return stop.exit_status
    if args.json:
        print_json(result_json(result, files))
    else:
        for line in files if files is not None else result.urls:
            print(line)
    return 0


def task_get(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_out_dir(args.out)
    return asyncio.run(_task_get(args))


async def _task_get(args: argparse.Namespace) -> int:
    stop = Stop()
    stop.install()
    tasks: list[Task] = []
    files: dict[str, list[Path]] = {}
    try:
        async with connect(args) as client:
            with stop.scope():
                tasks = await client.get_tasks(args.ids)
                if args.out is not None:
                    for task in tasks:
                        if task.result is not None:
                            files[task.id] = await client.download(task.result, args.out)
    finally:
        stop.uninstall()
    if stop.interrupted:
        warn("interrupted")
        return stop.exit_status
    found = {task.id: task for task in tasks}
    missing = [i for i in dict.fromkeys(args.ids) if i not in found]
    if args.json:
        print_json([
            task_json(found[i], files.get(i)) if i in found else {"id": i, "status": "not_found"}
            for i in dict.fromkeys(args.ids)
        ])
    else:
        for task_id in dict.fromkeys(args.ids):
            if task_id in found:
                show_task(found[task_id], files.get(task_id))
            else:
                print(f"{task_id}  not found")
    for task_id in missing:
        error(f"task {task_id} is not known to {service_name(args)}")
    return 1 if missing else 0


def task_wait(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    return asyncio.run(_task_wait(args))


async def _task_wait(args: argparse.Namespace) -> int:
    stop = Stop()
    stop.install()
    ids = list(dict.fromkeys(args.ids))
    outcomes: dict[str, tuple[ImageResult, list[Path]] | FluxError] = {}

    async def one(client: FluxClient, task_id: str) -> None:
        try:
            result = await client.wait(task_id)
            outcomes[task_id] = (result, await client.download(result, args.out))
        except FluxError as exc:
            outcomes[task_id] = exc

    try:
        async with connect(args) as client:
            with stop.scope(), spinner(f"waiting for {len(ids)} task(s)", quiet=args.quiet):
                async with anyio.create_task_group() as group:
                    for task_id in ids:
                        group.start_soon(one, client, task_id)
    finally:
        stop.uninstall()
    if stop.interrupted:
        warn("interrupted")
        return stop.exit_status
    report = []
    for task_id in ids:
        outcome = outcomes[task_id]
        if isinstance(outcome, FluxError):
            error(str(outcome) if task_id in str(outcome) else f"task {task_id}: {outcome}")
            report.append({"id": task_id, "status": TaskStatus.FAILED.value,
                           "error": str(outcome)})
        else:
            result, paths = outcome
            report.append({"id": task_id, "status": TaskStatus.SUCCEEDED.value,
                           **result_json(result, paths)})
            if not args.json:
                for path in paths:
                    print(path)
    if args.json:
        print_json(report)
    return 1 if any(isinstance(o, FluxError) for o in outcomes.values()) else 0


def serve(args: argparse.Namespace) -> int:
    """``flux-async serve``: the standalone local server of ``python -m flux_async.testing``."""
    from flux_async.testing import LocalFluxServer, ServerSettings
    from flux_async.testing import serve as serve_forever

    try:
        settings = ServerSettings(
            generation_time=args.generation_time, failure_rate=args.failure_rate, seed=args.seed
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def ready(server: LocalFluxServer) -> None:
        warn(
            "point flux-async (or any client) at it with:\n"
            f"  export {BASE_URL_ENV}={server.url} {API_KEY_ENV}={server.token} "
            f"{DOWNLOAD_ALLOW_ENV}={server.url}\n"
            "Ctrl-C stops it."
        )

    asyncio.run(serve_forever(settings, host=args.host, port=args.port, on_ready=ready))
    return 0


def gallery(args: argparse.Namespace) -> int:
    """``flux-async gallery DIR``: DIR/index.html again, from DIR/manifest.jsonl alone."""
    directory = Path(args.dir)
    manifest = directory / MANIFEST_NAME
    try:
        text = manifest.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UsageError(f"{manifest} not found: is {directory} the --out of a batch?") from None
    records: dict[int, Record] = {}
    for raw in text.splitlines():
        # Read only, like the batch's own loader: the last record of a line wins and
        # a line torn by a killed run is skipped. A running batch is not disturbed.
        try:
            record = Record.from_json(json.loads(raw))
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            continue
        if record is not None:
            records[record.line] = record
    page = directory / GALLERY_NAME
    write_page(page, render(
        records.values(), title=directory.resolve().name or str(directory), state="manifest",
        updated=time.strftime("%Y-%m-%d %H:%M:%S"),
    ))
    print(page)
    return 0
