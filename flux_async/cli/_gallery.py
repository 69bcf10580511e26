"""``OUT/index.html``: every line of a batch as a picture, kept current as the job runs.

The page is built from the manifest's records alone (``render``), so
``flux-async gallery OUT`` rebuilds exactly what the running job wrote. It is one
self-contained file: inline CSS, no script, nothing fetched from the network;
images are the files in ``OUT``, by relative path, so the directory can be moved,
zipped or served as it is.

A page of thousands of lines stays usable: thumbnails load lazily inside boxes of
a fixed shape (nothing jumps while they arrive), cards off screen are not laid out
(``content-visibility``), and tabs filter by status in plain CSS (``#failed`` in
the address, so a filtered view can be bookmarked and survives a reload): the
failed lines of a 10,000-line job are one click away. The only script is the
one line that reloads the page of a running job (keeping the scroll position and
the filter, which a ``<meta http-equiv="refresh">`` would lose).

Every string from the manifest (prompts are user input) is escaped, in text and in
attributes alike; file names are percent-encoded, so a name cannot become a URL
that points anywhere but into ``OUT``. A prompt appears on its card several
times (its text, its tooltip, each image's ``alt``), so a card shows at most
``PROMPT_SHOWN`` characters of it: a card shows three lines anyway, and a page
of long prompts would otherwise weigh several times its manifest (which keeps
every prompt whole).

While a batch runs, ``LiveGallery`` rewrites the page whenever something changed,
but at most every ``EVERY`` seconds (or twenty times as long as one rewrite
took, whichever is longer: a 10,000-line page takes about 0.1 s to build), and
once at the end; each rewrite replaces the file atomically, so a browser never
sees half a page.
"""

from __future__ import annotations

import collections
import contextlib
import html
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import anyio
import attrs

from ._input import Entry, request_fields
from ._ledger import Ledger, Record
from ._output import PROG

__all__ = [
    "EVERY", "GALLERY_NAME", "PROMPT_SHOWN", "LiveGallery", "live_records", "render",
    "write_page",
]

GALLERY_NAME = "index.html"
#: The shortest time between two rewrites of a running job's page, in seconds.
EVERY = 1.0
# While the job runs the page reloads itself this often (seconds), so a browser left
# open on it follows the job; less often for a big page, which takes longer to load.
_RELOAD = 10
_RELOAD_BIG = 30
_BIG = 2000  # lines
#: The most characters of a prompt a card shows (then "…").
PROMPT_SHOWN = 300

# The statuses a card can have, in the order of the filter buttons. "pending" is
# not in the manifest: it is a line of the input that has no task id yet.
_SHOWN = ("done", "failed", "running", "pending")
_STATUS = {"done": "done", "failed": "failed", "invalid": "failed", "submitted": "running"}


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _status(record: Record) -> str:
    return _STATUS.get(record.status, "pending")


# --- the page --------------------------------------------------------------------------


def render(records: Iterable[Record], *, title: str, state: str, updated: str) -> str:
    """The whole page for ``records`` (one per line; status ``pending`` for unsent lines).

    ``state`` is ``running`` (the page then reloads itself), ``finished``,
    ``interrupted`` or ``manifest`` (rebuilt by ``flux-async gallery``); ``updated``
    is the time to show, as text.
    """
    cards: list[str] = []
    counts: collections.Counter[str] = collections.Counter()
    images = 0
    for record in sorted(records, key=lambda r: r.line):
        status = _status(record)
        counts[status] += 1
        images += len(record.files) if status == "done" else 0
        cards.append(_card(record, status))
    total = sum(counts.values())
    every = _RELOAD if total <= _BIG else _RELOAD_BIG
    reload = (
        f"<script>setTimeout(() => location.reload(), {every * 1000})</script>\n"
        if state == "running" else ""
    )
    anchors = "".join(f'<i id="{key}"></i>' for key in ("all", *_SHOWN))
    tabs = "".join(
        f'<a href="#{key}" class="tab {key}">{name} <b>{number}</b></a>'
        for key, name, number in [
            ("all", "All", total), *((s, s.capitalize(), counts[s]) for s in _SHOWN)
        ]
    )
    empty = "" if cards else '<p class="empty">No lines in the manifest yet.</p>'
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"{reload}<title>{_esc(title)}: {total} lines</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n{anchors}\n"
        f'<header>\n<div class="head"><h1>{_esc(title)}</h1>'
        f'<p class="state {_esc(state)}">{_state_text(state, every)} · '
        f"updated {_esc(updated)} · {images} image{'s' if images != 1 else ''}</p></div>\n"
        f'<nav class="tabs">{tabs}</nav>\n</header>\n'
        f'<main class="grid">\n{"".join(cards)}{empty}</main>\n</body>\n</html>\n'
    )


def _state_text(state: str, reload: int) -> str:
    return {
        "running": f"<b>Running</b> (this page reloads every {reload} s)",
        "finished": "<b>Finished</b>",
        "interrupted": "<b>Interrupted</b>: run the same command again to resume",
        "manifest": "<b>Built from the manifest</b>",
    }.get(state, _esc(state))


def _shortened(prompt: object) -> object:
    if isinstance(prompt, str) and len(prompt) > PROMPT_SHOWN:
        return prompt[:PROMPT_SHOWN].rstrip() + "…"
    return prompt


def _card(record: Record, status: str) -> str:
    request = record.request or {}
    prompt = _shortened(request.get("prompt"))
    facts = [f"line {record.line}"]
    if request.get("action") == "edit":
        facts.append("edit")
    facts += [
        _esc(request.get("model") or "default model"),
        _esc(request.get("size") or "default size"),
    ]
    task = (
        f'<p class="task">task <code>{_esc(record.task_id)}</code></p>' if record.task_id else ""
    )
    text = (
        f'<p class="prompt" title="{_esc(prompt)}">{_esc(prompt)}</p>'
        if isinstance(prompt, str)
        else '<p class="prompt none">(no prompt recorded)</p>'
    )
    return (
        f'<article class="card {status}" id="line-{record.line}">'
        f"{_picture(record, status, prompt)}"
        f'<div class="about">{text}<p class="facts">{" · ".join(facts)}</p>{task}</div>'
        "</article>\n"
    )


def _picture(record: Record, status: str, prompt: object) -> str:
    if status == "done" and record.files:
        columns = math.ceil(math.sqrt(len(record.files)))
        alt = _esc(prompt if isinstance(prompt, str) else f"line {record.line}")
        images = "".join(
            f'<a href="{quote(name, safe="")}"><img src="{quote(name, safe="")}" '
            f'loading="lazy" decoding="async" alt="{alt}"></a>'
            for name in record.files
        )
        return f'<div class="box pics" style="--cols:{columns}">{images}</div>'
    if status == "failed":
        reason = record.reason or "error"
        return (
            f'<div class="box note"><p class="badge">Failed: {_esc(reason)}</p>'
            f'<p class="reason">{_esc(record.error or "no message")}</p></div>'
        )
    word = {"running": "Running", "done": "Done, no image file"}.get(status, "Pending")
    return f'<div class="box note"><p class="badge">{word}</p></div>'


# --- a running job ---------------------------------------------------------------------


def live_records(entries: Sequence[Entry], records: Mapping[int, Record]) -> list[Record]:
    """One record per input line: the manifest's, or ``pending`` for a line not sent yet.

    A record made for an earlier version of the line (its request changed) is not
    shown: the line runs again as a new one, so it is pending.
    """
    shown = []
    for entry in entries:
        record = records.get(entry.line)
        if record is not None and record.status == "invalid" and entry.request is not None:
            # Failed before any request (an upload): the manifest has no prompt to show.
            shown.append(attrs.evolve(record, request=request_fields(entry.request)))
        elif record is not None and (record.status == "invalid" or record.key == entry.key):
            shown.append(record)
        elif entry.request is not None:
            shown.append(Record(entry.line, "pending", request=request_fields(entry.request)))
        else:
            shown.append(Record(entry.line, "invalid", error=entry.error, reason="invalid_input"))
    return shown


class LiveGallery:
    """Keeps ``directory/index.html`` current for a running job (see the module docstring).

    ``changed()`` is cheap and may be called on every event; ``run()`` (a task of
    the job) does the rewriting; ``finish()`` writes the last page. A page that
    cannot be written is a warning, never a reason to stop a job that is paying
    for images: ``on_error`` gets the first such error, later ones are dropped.
    """

    def __init__(
        self,
        directory: Path,
        entries: Sequence[Entry],
        ledger: Ledger,
        *,
        every: float = EVERY,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = directory / GALLERY_NAME
        self.title = directory.resolve().name or str(directory)
        self.entries = entries
        self.ledger = ledger
        self.every = every
        self.on_error = on_error
        self.writes = 0
        self.failed = False
        self._dirty = anyio.Event()
        self._dirty.set()  # the first page, all lines pending, as soon as the job starts

    def changed(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            started = time.monotonic()
            self.write("running")
            # Never spend more than a twentieth of the job's time on its page.
            await anyio.sleep(max(self.every, 20 * (time.monotonic() - started)))

    def finish(self, *, interrupted: bool) -> None:
        self.write("interrupted" if interrupted else "finished")

    def write(self, state: str) -> None:
        page = render(
            live_records(self.entries, self.ledger.records), title=self.title, state=state,
            updated=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        try:
            write_page(self.path, page)
        except OSError as exc:
            if not self.failed and self.on_error is not None:
                why = exc.strerror or exc
                self.on_error(f"{PROG}: cannot write the gallery {self.path}: {why}")
            self.failed = True
            return
        self.writes += 1


# --- the one piece of I/O --------------------------------------------------------------

_serial = itertools.count()


def write_page(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: readers see the old page or the new one.

    No fsync: the page is derived from the manifest and ``flux-async gallery``
    rebuilds it, so it is not worth a wait on the disk at every rewrite.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{next(_serial)}.tmp")
    try:
        with temp.open("x", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


_CSS = """
:root{color-scheme:light dark;--bg:#f4f4f5;--card:#fff;--ink:#18181b;--soft:#71717a;
--line:#e4e4e7;--ok:#15803d;--bad:#b91c1c;--badbg:#fef2f2;--run:#1d4ed8;--wait:#a1a1aa}
@media (prefers-color-scheme:dark){:root{--bg:#18181b;--card:#27272a;--ink:#f4f4f5;
--soft:#a1a1aa;--line:#3f3f46;--ok:#4ade80;--bad:#f87171;--badbg:#3b1d1d;--run:#93c5fd}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
body>i{position:absolute;top:0}
header{position:sticky;top:0;z-index:1;background:var(--bg);border-bottom:1px solid var(--line);
padding:12px 16px 10px}
.head{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 16px}
h1{font-size:20px;margin:0;overflow-wrap:anywhere}
.state{margin:0;color:var(--soft);font-size:13px}
.state.running b{color:var(--run)}.state.interrupted b{color:var(--bad)}
.tabs{display:flex;flex-wrap:wrap;gap:6px;padding:10px 0 0}
.tab{padding:4px 12px;border-radius:999px;white-space:nowrap;text-decoration:none;
color:var(--soft);border:1px solid transparent}
.tab:hover{border-color:var(--line)}
.tab b{font-variant-numeric:tabular-nums;color:var(--ink)}
.tab.done b{color:var(--ok)}.tab.failed b{color:var(--bad)}.tab.running b{color:var(--run)}
.tab.all,#done:target~header .done,#failed:target~header .failed,
#running:target~header .running,#pending:target~header .pending{background:var(--card);
color:var(--ink);border-color:var(--line)}
:target:not(#all)~header .tab.all{background:none;color:var(--soft);border-color:transparent}
#done:target~main .card:not(.done),#failed:target~main .card:not(.failed),
#running:target~main .card:not(.running),#pending:target~main .card:not(.pending){display:none}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px;
padding:16px;margin:0 auto;max-width:1800px}
@media (max-width:520px){.grid{grid-template-columns:repeat(2,minmax(0,1fr));gap:10px;
padding:10px}body{font-size:14px}header{padding:10px 10px 8px}.tab{padding:3px 9px}}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;
display:flex;flex-direction:column;content-visibility:auto;contain-intrinsic-size:auto 340px}
.card.failed{border-color:var(--bad)}
.box{aspect-ratio:1/1;width:100%;background:var(--line)}
.pics{display:grid;grid-template-columns:repeat(var(--cols),minmax(0,1fr));gap:2px}
.pics a{display:block;min-height:0;aspect-ratio:1/1}
.pics img{display:block;width:100%;height:100%;object-fit:cover}
.note{display:flex;flex-direction:column;justify-content:center;align-items:center;
padding:12px;text-align:center;overflow:auto}
.badge{margin:0;font-weight:600;color:var(--soft)}
.failed .note{background:var(--badbg)}.failed .badge{color:var(--bad)}
.running .badge{color:var(--run)}
.reason{margin:6px 0 0;font-size:13px;overflow-wrap:anywhere}
.about{padding:8px 10px 10px;min-width:0}
.about p{margin:0}
.prompt{display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden;
overflow-wrap:anywhere}
.prompt.none{color:var(--soft);font-style:italic}
.facts,.task{color:var(--soft);font-size:12px;margin-top:4px!important;overflow-wrap:anywhere}
.task code{font-size:11px}
.empty{grid-column:1/-1;color:var(--soft);text-align:center}
"""
