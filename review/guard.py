"""Who may use the station: the token beyond loopback, this station's own name in the Host
header, and POSTs from its own pages only.

- **Token**: from an `Authorization: Bearer` header, a cookie, or once from the URL the station
  prints (`?token=`), which sets the cookie and redirects to the URL without it.
- **Host**: without a token the station answers only requests that name a loopback host
  (`127.0.0.1`, `localhost`, `[::1]`). A web page cannot then reach it through DNS rebinding, a
  name of its own resolved to 127.0.0.1, which the browser treats as that page's own site.
- **Cross-site**: a POST that a browser marks as coming from another site (`Sec-Fetch-Site`,
  else `Origin`) is refused, so a page elsewhere in the operator's browser cannot label parts or
  apply a calibration through the operator's session. Scripts and curl send neither header.
"""

from __future__ import annotations

import hmac
import urllib.parse

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_COOKIE = "dcam_review_token"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


class Guard(BaseHTTPMiddleware):
    def __init__(self, app, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next) -> Response:
        if self.token is None and _host_name(request) not in LOOPBACK_NAMES:
            return PlainTextResponse("this station answers on loopback names only", 403)
        if request.method == "POST" and not _same_origin(request):
            return PlainTextResponse("cross-site request refused", status_code=403)
        if self.token is None or request.url.path == "/healthz":
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and _equal(given, self.token):
            clean = request.url.remove_query_params("token")
            response = RedirectResponse(str(clean), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        header = request.headers.get("authorization", "")
        offered = header[7:] if header.lower().startswith("bearer ") else None
        offered = offered or request.cookies.get(TOKEN_COOKIE)
        if offered is None or not _equal(offered, self.token):
            return PlainTextResponse(
                "this station needs its token: open the address dcam-review printed "
                "(…?token=…) or send 'Authorization: Bearer <token>'",
                status_code=401,
            )
        return await call_next(request)


def _host_name(request: Request) -> str:
    """The Host header's name, without port or IPv6 brackets."""
    host = request.headers.get("host", "")
    return urllib.parse.urlsplit(f"//{host}").hostname or ""


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _same_origin(request: Request) -> bool:
    """Browsers say where a request comes from (Sec-Fetch-Site, else Origin); scripts and
    curl say neither and are let through (the token and the Host check still apply)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urllib.parse.urlsplit(origin).netloc == request.headers.get("host")
