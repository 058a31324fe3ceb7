"""The dashboard at `/ui`: plain HTML, CSS and JavaScript, served by the gateway itself.

The files hold no data. The page asks for an API key or a bearer token when the gateway wants
one, keeps it in the tab's session storage, and reads the same API as every other client
(servers, services, nodes, stats, topology, tasks, traces) with it, so each of its requests
passes the chain as that person: what they may not see answers 403, what they may not do
(cancel, retry) too. The files themselves are therefore served without a credential, like
any sign-in page, and under a strict Content-Security-Policy: scripts and styles from here
only, nothing inline, no frames, no other origin to talk to.

Nothing is fetched at run time from anywhere else and there is no build step: the files in
`api/ui/` are what the browser gets, read once at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from meshgate.api.etag import etag, matches
from meshgate.api.problems import problem_response
from meshgate.errors import NotFound

PATH = "/ui"
PREFIX = PATH + "/"
_FILES = Path(__file__).with_name("ui")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (an upgraded gateway's page is seen at once), cheaply: 304.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, as served."""

    body: bytes
    media_type: str
    etag: bytes


def load(folder: Path = _FILES) -> dict[str, Asset]:
    """The page's files by name: those directly in `folder` with a known type, nothing else
    (no subfolders, no names a request could climb out with)."""
    assets: dict[str, Asset] = {}
    for path in sorted(folder.iterdir()):
        media_type = _TYPES.get(path.suffix)
        if media_type is None or not path.is_file() or not _NAME.fullmatch(path.name):
            continue
        body = path.read_bytes()
        assets[path.name] = Asset(body, media_type, etag(body))
    return assets


def routes(assets: dict[str, Asset] | None = None) -> list[BaseRoute]:
    """`/ui/` (the page; `/ui` redirects to it) and `/ui/{name}` (its scripts and styles)."""
    files = load() if assets is None else assets

    def serve(request: Request, name: str) -> Response:
        asset = files.get(name)
        if asset is None:
            return problem_response(NotFound(f"no file {name!r} in the dashboard"), PATH)
        headers = {**HEADERS, "ETag": asset.etag.decode()}
        if matches(request.headers.get("if-none-match", "").encode(), asset.etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    async def page(request: Request) -> Response:
        return serve(request, "index.html")

    async def asset(request: Request) -> Response:
        return serve(request, request.path_params["name"])

    return [
        Route(PREFIX, page, methods=["GET", "HEAD"], include_in_schema=False),
        Route(PREFIX + "{name}", asset, methods=["GET", "HEAD"], include_in_schema=False),
    ]
