"""The I/O edge: everything that crosses the network goes through here, over aiohttp.

``http`` is the one place aiohttp's exceptions are translated into flux_async's
(``raise ... from``), with the session and every timeout; ``link`` is one client's
session and the API's POSTs; ``download`` and ``sinks`` fetch images to memory or
files, through ``guard``'s session when the download guard is on (its resolver
and connector check every address a download connects to); ``uploads`` checks
a local image (plain functions) and sends it.

What the bytes mean is decided below, in ``_core``. May import: ``_core``.
"""
