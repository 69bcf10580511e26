"""flux_async: an asyncio-first client for the Ace Data Cloud Flux image API.

>>> async with FluxClient() as client:          # key from $ACEDATACLOUD_API_TOKEN
...     result = await client.generate("a white siamese cat")
...     print(result.urls)

Everything public is re-exported here; the modules behind it are private, except
these public submodules, each imported only when you import it:

- ``flux_async.web``: the aiohttp.web callback receiver;
- ``flux_async.asgi``: the callback receiver for any ASGI app (``CallbackApp``,
  no extra), and routes for Starlette and FastAPI apps (extra ``asgi`` or
  ``fastapi``);
- ``flux_async.sync``: ``FluxClient`` for blocking code (scripts, notebooks,
  Django, Flask);
- ``flux_async.redis``: Redis building blocks for several processes sharing one
  token's limits (extra ``redis``);
- ``flux_async.otel``: traces and metrics for OpenTelemetry,
  ``FluxClient(telemetry=OpenTelemetry())`` (extra ``otel``);
- ``flux_async.testing``: a local server of the API.
"""

from ._client.client import FluxClient
from ._core.callbacks import CallbackVerdict
from ._core.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BlockedAddressError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    CoordinationError,
    DownloadError,
    DownloadRedirectError,
    DownloadTimeoutError,
    FluxError,
    ForbiddenError,
    IdempotencyConflictError,
    ImageTooLargeError,
    InsufficientBalanceError,
    JournalError,
    NetworkError,
    NotAnImageError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    SubmissionUncertainError,
    TaskAuthenticationError,
    TaskClosedError,
    TaskError,
    TaskFailedError,
    TaskForbiddenError,
    TaskInsufficientBalanceError,
    TaskNotFoundError,
    TaskProtocolError,
    TaskTimeoutError,
    TransportError,
    UpstreamTimeoutError,
    ValidationError,
)
from ._core.models import (
    MAX_PROMPT_CHARS,
    EditRequest,
    GenerateRequest,
    Image,
    ImageRequest,
    ImageResult,
    Outcome,
    Task,
    TaskErrorInfo,
    TaskStatus,
)
from ._core.settings import USE_CLIENT_DEFAULT, ClientSettings, UseClientDefault
from ._edge.uploads import LocalImage
from ._engine.map import MapEvent, MapProgress
from ._engine.recovery import Recovered

__version__ = "0.1.0.dev0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BlockedAddressError",
    "CallbackVerdict",
    "ClientClosedError",
    "ClientSettings",
    "ConfigurationError",
    "ConnectError",
    "CoordinationError",
    "DownloadError",
    "DownloadRedirectError",
    "DownloadTimeoutError",
    "EditRequest",
    "FluxClient",
    "FluxError",
    "ForbiddenError",
    "GenerateRequest",
    "Image",
    "ImageRequest",
    "ImageResult",
    "IdempotencyConflictError",
    "ImageTooLargeError",
    "InsufficientBalanceError",
    "JournalError",
    "LocalImage",
    "MAX_PROMPT_CHARS",
    "MapEvent",
    "MapProgress",
    "NetworkError",
    "NotAnImageError",
    "NotFoundError",
    "Outcome",
    "ProtocolError",
    "RateLimitError",
    "Recovered",
    "RequestTimeoutError",
    "ServerError",
    "SubmissionUncertainError",
    "Task",
    "TaskAuthenticationError",
    "TaskClosedError",
    "TaskError",
    "TaskErrorInfo",
    "TaskFailedError",
    "TaskForbiddenError",
    "TaskInsufficientBalanceError",
    "TaskNotFoundError",
    "TaskProtocolError",
    "TaskStatus",
    "TaskTimeoutError",
    "TransportError",
    "USE_CLIENT_DEFAULT",
    "UpstreamTimeoutError",
    "UseClientDefault",
    "ValidationError",
    "__version__",
]
