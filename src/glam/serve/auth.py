"""API keys for ``glam serve --api-key KEY`` (or ``GLAM_API_KEY``): an ASGI middleware.

Every route but ``/health`` needs ``Authorization: Bearer KEY``; anything else gets 401 in OpenAI's
error shape (``code: invalid_api_key``) with ``WWW-Authenticate: Bearer``. The key is compared with
``hmac.compare_digest`` (constant time in the key's content).
"""

from __future__ import annotations

import hmac
import ipaddress
import json

OPEN_PATHS = frozenset({"/health"})


class ApiKey:
    """ASGI middleware: a request without the right bearer key gets 401 before the app sees it."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorised(scope):
            return await self.app(scope, receive, send)
        given = any(name == b"authorization" for name, _ in scope.get("headers") or [])
        message = "invalid API key" if given else "no API key: send the header Authorization: Bearer KEY"
        body = {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        }
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    def _authorised(self, scope) -> bool:
        values = [value for name, value in scope.get("headers") or [] if name == b"authorization"]
        return len(values) == 1 and hmac.compare_digest(values[0], self.expected)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
