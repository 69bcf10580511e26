"""The aiohttp edge: send one POST, hand back status, headers and body bytes.

This is the only module that touches aiohttp's client. Its exceptions are
translated here, once, into flux_async's transport errors, keeping the one
distinction retries depend on: ``ConnectError`` means nothing reached the
service, every other failure means the request may have gone out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from ._errors import ConnectError, NetworkError, ProtocolError, RequestTimeoutError

__all__ = ["Reply", "Transport"]

# An API answer is a few KB; a batch of 100 tasks some tens of KB. Anything far
# larger is not the protocol and is not read into memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@attrs.frozen
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport:
    """POSTs JSON to the API over one ``aiohttp.ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = headers
        self._timeout = timeout

    def __repr__(self) -> str:
        # The headers hold the API key: never show them.
        return f"<Transport {self._base_url}>"

    async def post(self, path: str, payload: Mapping[str, Any]) -> Reply:
        data = json.dumps(payload, separators=(",", ":")).encode()
        url = self._base_url + path
        try:
            async with self._session.post(
                url, data=data, headers=self._headers, timeout=self._timeout
            ) as response:
                length = response.content_length
                if length is not None and length > MAX_ANSWER_BYTES:
                    raise ProtocolError(
                        f"answer of {length} bytes is too large", status=response.status
                    )
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(body) > MAX_ANSWER_BYTES:
                    raise ProtocolError("answer is too large", status=response.status)
                return Reply(response.status, response.headers, body)
        except aiohttp.ClientConnectorError as exc:
            # DNS, refused, unreachable: the request never left.
            raise ConnectError(f"cannot connect to {self._base_url}: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectError(f"connecting to {self._base_url} timed out") from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise RequestTimeoutError(f"no answer from {url} in time") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ProtocolError(f"answer from {url} was cut off: {exc}") from exc
        except aiohttp.ClientError as exc:
            # Disconnects, resets, malformed HTTP: the request may have been received.
            raise NetworkError(f"connection to {url} failed: {type(exc).__name__}") from exc
        except OSError as exc:
            raise NetworkError(f"connection to {url} failed: {exc.strerror or exc}") from exc

    async def post_form(
        self, url: str, body: bytes, content_type: str, *, timeout: aiohttp.ClientTimeout
    ) -> Reply:
        """POST a prepared (multipart) body to a full URL with the API's headers.

        For uploads, whose host may differ from the API's. The answer is read
        whole, up to ``MAX_ANSWER_BYTES``.
        """
        headers = {**self._headers, "content-type": content_type}
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout
            ) as response:
                length = response.content_length
                if length is not None and length > MAX_ANSWER_BYTES:
                    raise ProtocolError(
                        f"answer of {length} bytes is too large", status=response.status
                    )
                received = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    received += chunk
                    if len(received) > MAX_ANSWER_BYTES:
                        raise ProtocolError("answer is too large", status=response.status)
                return Reply(response.status, response.headers, bytes(received))
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect to {url}: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectError(f"connecting to {url} timed out") from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise RequestTimeoutError(f"no answer from {url} in time") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ProtocolError(f"answer from {url} was cut off: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"connection to {url} failed: {type(exc).__name__}") from exc
        except OSError as exc:
            raise NetworkError(f"connection to {url} failed: {exc.strerror or exc}") from exc
