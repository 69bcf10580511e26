"""The protocol core, without I/O: what flux_async sends, what answers mean, and its rules.

Values and decisions, tested with plain function calls: the models users hand in
and get back (``models``), the exception tree (``errors``), the one cattrs
converter (``wire``), request bodies and the reading of answers (``protocol``),
where a task stands (``state``), callback tokens and what a posted callback means
(``callbacks``), every setting and its check (``settings``), the backoff and the
in-process rate gate (``limits``), every "may this be tried again?" table
with the one loop that applies them (``retry``), which addresses a download may
reach (``addresses``: the download guard's rules) and what an image is by its
first bytes (``formats``).

Nothing here opens a connection or names aiohttp; ``limits`` and ``retry`` only
read the clock and sleep. May import: nothing of flux_async outside ``_core``.
"""
