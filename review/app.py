"""The station's web app: Starlette routes rendering Jinja2 pages, a little plain JavaScript for
the keyboard, images served by part id (never by a path from the request).

Each label is written to SQLite by the request that gives it, before the next part is shown, so
a closed tab or a killed station loses nothing. Writes need the operator's name (a cookie set
once per browser) and, like every page, the token when the station has one. A POST from another
site's page (its Origin is not this station) is refused, so a page elsewhere in the browser
cannot label parts or apply a calibration through the operator's session.
"""

from __future__ import annotations

import hmac
import urllib.parse
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dcam.core.errors import DcamError
from dcam.review import charts, fit
from dcam.review.serving import take_up
from dcam.review.station import Station

HERE = Path(__file__).parent
TOKEN_COOKIE, OPERATOR_COOKIE = "dcam_review_token", "dcam_operator"
GLOBAL_KEY = "-"  # the URL of parts scored with no product (the global calibration)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def product_key(product: str | None) -> str:
    return GLOBAL_KEY if product is None else urllib.parse.quote(product, safe="")


def product_of(key: str) -> str | None:
    return None if key == GLOBAL_KEY else urllib.parse.unquote(key)


templates.env.filters["key"] = product_key
templates.env.filters["when"] = lambda stamp: stamp[:19].replace("T", " ") + " UTC"


class Guard(BaseHTTPMiddleware):
    """The token (header, cookie, or once in the URL, then a cookie), and same-origin POSTs."""

    def __init__(self, app, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next) -> Response:
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


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _same_origin(request: Request) -> bool:
    """Browsers say where a request comes from (Sec-Fetch-Site, else Origin); scripts and
    curl say neither and are let through (the token still applies)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urllib.parse.urlsplit(origin).netloc == request.headers.get("host")


def create_app(station: Station) -> Starlette:
    """The station's routes over one `Station`. Every page and API call first re-reads the
    results if a file grew, so parts a line PC scores meanwhile show up."""

    def refreshed(handler):
        async def wrapper(request: Request) -> Response:
            try:
                station.refresh()
            except DcamError as exc:  # e.g. rows of another build appeared in a results file
                return PlainTextResponse(f"cannot read the results again: {exc}", 409)
            return await handler(request)

        return wrapper

    def page(request: Request, name: str, **context) -> Response:
        context.update(
            station=station,
            run=station.run,
            operator=request.cookies.get(OPERATOR_COOKIE),
            done=request.query_params.get("done"),
        )
        return templates.TemplateResponse(request, name, context)

    async def index(request: Request) -> Response:
        history = station.repository.history() if station.repository else []
        return page(request, "index.html", summaries=station.summaries(), history=history)

    async def product_page(request: Request) -> Response:
        product = product_of(request.path_params["key"])
        if product not in station.run.products():
            return PlainTextResponse(f"no product {product!r} in these results", 404)
        parts = station.run.of_product(product)
        fitted, error = None, None
        target = request.query_params.get("target", "false_call_rate")
        rate = request.query_params.get("rate")
        if rate is not None:
            try:
                fitted = station.fit(product, target, float(rate))
            except (DcamError, ValueError) as exc:
                error = str(exc)
        fit_parts = station.fit_parts(product)
        threshold = station.threshold(product)
        proposed = fitted.threshold if fitted is not None else None
        return page(
            request,
            "product.html",
            product=product,
            parts=parts,
            labels=station.labels(),
            flagged=[p for p in station.queue(product) if p.flagged],
            borderline=[p for p in station.queue(product) if not p.flagged],
            threshold=threshold,
            confusion=None
            if threshold is None
            else fit.confusion(fit_parts, threshold, station.config.presume_passed_good),
            fitted=fitted,
            fit_error=error,
            target=target,
            rate=rate or station.config.false_call_rate,
            histogram=charts.histogram(fit_parts, threshold, proposed),
            roc=charts.roc_curve(fit.roc(fit_parts, station.config.presume_passed_good)),
            boundary=station.served_boundary(product),
            synthetic=station.synthetic().get(product),
        )

    async def apply(request: Request) -> Response:
        product = product_of(request.path_params["key"])
        form = await request.form()
        operator = request.cookies.get(OPERATOR_COOKIE)
        if not operator:
            return RedirectResponse(f"/operator?next=/product/{product_key(product)}", 303)
        try:
            threshold = float(form["threshold"])
            concerns = station.apply_concerns(product, threshold)
            if concerns and form.get("confirm") != "yes":
                return page(
                    request,
                    "confirm.html",
                    product=product,
                    threshold=threshold,
                    concerns=concerns,
                    form=dict(form),
                )
            target = {k: form[k] for k in ("target", "rate") if form.get(k)}
            record = station.apply({product: threshold}, operator, {**target, "concerns": concerns})
        except (DcamError, ValueError, KeyError) as exc:
            return page(request, "error.html", message=str(exc))
        note = f"calibration version {record.version} written: {product} threshold {threshold:.3f}"
        if station.config.server is not None:
            try:
                how = await run_in_threadpool(
                    take_up,
                    station.config.server,
                    station.repository.model,
                    record.version,
                    station.config.take_up_s,
                    station.config.api_key,
                )
            except DcamError as exc:
                return page(request, "error.html", message=f"{note}, but {exc}")
            note += f"; {station.config.server} serves it ({how})"
        query = urllib.parse.urlencode({"done": note})
        return RedirectResponse(f"/product/{product_key(product)}?{query}", 303)

    async def part_page(request: Request) -> Response:
        part = station.parts.get(request.path_params["id"])
        if part is None:
            return PlainTextResponse("no such part", 404)
        following = station.next_in_queue(part.product, part.id)
        return page(
            request,
            "part.html",
            part=part,
            label=station.labels().get(part.path),
            history=station.store.history(part.path),
            following=following,
            threshold=station.threshold(part.product),
        )

    async def label_part(request: Request) -> Response:
        part = station.parts.get(request.path_params["id"])
        if part is None:
            return PlainTextResponse("no such part", 404)
        operator = request.cookies.get(OPERATOR_COOKIE)
        if not operator:
            return RedirectResponse(f"/operator?next=/part/{part.id}", 303)
        form = await request.form()
        try:
            station.store.add(part.path, str(form.get("label")), operator, part.product)
        except DcamError as exc:
            return PlainTextResponse(str(exc), 400)
        following = station.next_in_queue(part.product, part.id)
        target = f"/part/{following.id}" if following else f"/product/{product_key(part.product)}"
        return RedirectResponse(target, 303)

    async def operator_page(request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            name = str(form.get("operator", "")).strip()
            nxt = str(form.get("next") or "/")
            if name and nxt.startswith("/") and not nxt.startswith("//"):
                response = RedirectResponse(nxt, 303)
                response.set_cookie(OPERATOR_COOKIE, name, samesite="strict", max_age=30 * 86400)
                return response
        return page(request, "operator.html", next=request.query_params.get("next", "/"))

    def _file(request: Request, kind: str) -> Response:
        part = station.parts.get(request.path_params["id"])
        path = None if part is None else getattr(part, kind)
        if path is None:
            return PlainTextResponse(f"no {kind} for this part", 404)
        return FileResponse(path)

    async def image(request: Request) -> Response:
        return _file(request, "image")

    async def heatmap(request: Request) -> Response:
        return _file(request, "heatmap")

    async def labels_csv(request: Request) -> Response:
        import io

        buffer = io.StringIO()
        station.store.export_csv(buffer)
        headers = {"content-disposition": 'attachment; filename="labels.csv"'}
        return Response(buffer.getvalue(), media_type="text/csv", headers=headers)

    async def api_label(request: Request) -> Response:
        body = await request.json()
        part = station.parts.get(body.get("id", "")) or next(
            (p for p in station.run.parts if p.path == body.get("path")), None
        )
        if part is None:
            return JSONResponse({"error": "no such part"}, 404)
        try:
            label = station.store.add(
                part.path, str(body.get("label")), str(body.get("operator", "")), part.product
            )
        except DcamError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"id": part.id, "path": part.path, "label": label.label})

    async def api_parts(request: Request) -> Response:
        key = request.query_params.get("product")
        labels = station.labels()
        parts = station.queue(product_of(key)) if key is not None else station.run.parts
        return JSONResponse(
            [
                {
                    "id": p.id,
                    "path": p.path,
                    "product": p.product,
                    "score": p.score,
                    "flagged": p.flagged,
                    "calibration": p.calibration,
                    "label": labels[p.path].label if p.path in labels else None,
                }
                for p in parts
            ]
        )

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", refreshed(index)),
        Route("/product/{key}", refreshed(product_page)),
        Route("/product/{key}/apply", refreshed(apply), methods=["POST"]),
        Route("/part/{id}", refreshed(part_page)),
        Route("/part/{id}", refreshed(label_part), methods=["POST"]),
        Route("/operator", operator_page, methods=["GET", "POST"]),
        Route("/image/{id}", image),
        Route("/heatmap/{id}", heatmap),
        Route("/labels.csv", labels_csv),
        Route("/api/label", refreshed(api_label), methods=["POST"]),
        Route("/api/parts", refreshed(api_parts)),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=station.config.token)])
