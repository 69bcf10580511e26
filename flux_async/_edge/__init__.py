"""The I/O edge: everything that crosses the network goes through here, over aiohttp.

``http`` is the one place aiohttp's exceptions are translated into flux_async's
(``raise ... from``), with the session and every timeout; ``link`` is one client's
session and the API's POSTs; ``download`` and ``sinks`` fetch images to memory or
files; ``uploads`` checks a local image (plain functions) and sends it.

What the bytes mean is decided below, in ``_core``. May import: ``_core``.
"""
