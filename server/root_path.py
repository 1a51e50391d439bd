"""``--root-path``: serving under a path prefix behind a reverse proxy (vLLM's flag, ASGI's root_path).

uvicorn puts the root path in front of every request path (the ASGI rule), while Litestar routes
on the path as given; this wrapper takes the prefix off again before routing, so ``/v1/models``
answers whether the proxy strips the prefix (the usual setup) or forwards it unchanged.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send


def under_root_path(app: ASGIApp, root_path: str) -> ASGIApp:
    root = root_path.rstrip("/")
    if not root:
        return app

    async def strip_prefix(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            for _ in range(2):  # once for uvicorn's prefix, once more if the proxy forwarded it too
                if path == root or path.startswith(root + "/"):
                    path = path[len(root):] or "/"
            if path != scope["path"]:
                scope = scope.copy()  # the server's own scope stays as it was
                scope["path"], scope["raw_path"] = path, path.encode()
        await app(scope, receive, send)

    return strip_prefix
