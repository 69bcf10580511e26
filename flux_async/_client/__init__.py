"""The façade: ``FluxClient`` and what the public modules are built on.

``client`` is ``FluxClient``: its lifecycle, its wiring of the engine, and thin
public methods; ``files`` its upload and download methods and ``edit``'s image
argument; ``receiver`` the framework-neutral half of the callback receivers
(``flux_async.web``, ``flux_async.asgi``); ``blocking`` the event loop in a thread
that ``flux_async.sync`` runs on.

May import: ``_engine``, ``_edge`` and ``_core``. Imported by the public modules
(``flux_async``, ``sync``, ``web``, ``asgi``), the ``cli`` and nothing below.
"""
