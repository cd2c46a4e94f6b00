"""The station's web app: Starlette routes rendering Jinja2 pages, a little plain JavaScript for
the keyboard, images served by part id (never by a path from the request), products by a key
derived from their name (any name works in a URL).

Each label is written to SQLite by the request that gives it, before the next part is shown, so
a closed tab or a killed station loses nothing. Writes need the operator's name (a cookie set
once per browser); `guard.py` decides who may reach the station at all. Reading results,
SQLite and the repository blocks, so it runs in Starlette's thread pool, not on the event loop
every operator shares.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import urllib.parse
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
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
from dcam.review.guard import Guard
from dcam.review.serving import take_up
from dcam.review.station import Station
from dcam.review.views import product_context

HERE = Path(__file__).parent
OPERATOR_COOKIE = "dcam_operator"
GLOBAL_KEY = "global"  # the parts scored with no product (the global calibration)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def product_key(product: str | None) -> str:
    """A product's URL key: a digest of its name, so slashes, percent signs and any script in
    a name never meet the router."""
    if product is None:
        return GLOBAL_KEY
    return "p" + hashlib.sha256(product.encode("utf-8", "surrogateescape")).hexdigest()[:12]


templates.env.filters["key"] = product_key
templates.env.filters["when"] = lambda stamp: stamp[:19].replace("T", " ") + " UTC"


def create_app(station: Station) -> Starlette:
    """The station's routes over one `Station`. Every page and API call first re-reads the
    results if a file grew, so parts a line PC scores meanwhile show up."""

    def product_of(key: str | None) -> tuple[bool, str | None]:
        products = {product_key(p): p for p in station.run.products()}
        return (key in products), products.get(key)

    def page(request: Request, name: str, **context) -> Response:
        context.update(
            station=station,
            run=station.run,
            operator=request.cookies.get(OPERATOR_COOKIE),
            done=request.query_params.get("done"),
        )
        return templates.TemplateResponse(request, name, context)

    def refreshed(handler):
        async def wrapper(request: Request) -> Response:
            try:
                await run_in_threadpool(station.refresh)
            except DcamError as exc:  # e.g. rows of another build appeared in a results file
                return PlainTextResponse(f"cannot read the results again: {exc}", 409)
            return await handler(request)

        return wrapper

    async def index(request: Request) -> Response:
        summaries = await run_in_threadpool(station.summaries)
        history = station.repository.history() if station.repository else []
        return page(request, "index.html", summaries=summaries, history=history)

    async def product_page(request: Request) -> Response:
        known, product = product_of(request.path_params["key"])
        if not known:
            return PlainTextResponse("no such product in these results", 404)
        target = request.query_params.get("target", "false_call_rate")
        rate = request.query_params.get("rate")
        context = await run_in_threadpool(product_context, station, product, target, rate)
        return page(request, "product.html", product=product, target=target, **context)

    async def apply(request: Request) -> Response:
        known, product = product_of(request.path_params["key"])
        operator = request.cookies.get(OPERATOR_COOKIE)
        if not known:
            return PlainTextResponse("no such product in these results", 404)
        if not operator:
            return RedirectResponse(f"/operator?next=/product/{product_key(product)}", 303)
        form = dict(await request.form())
        try:
            threshold = float(form["threshold"])
            rate = float(form.get("rate") or station.config.false_call_rate)
            if not math.isfinite(threshold):
                raise ValueError(f"threshold must be a finite number, got {form['threshold']}")
            if form.get("labels_digest") and form["labels_digest"] != station.store.digest():
                raise ValueError("the labels changed since this fit (another operator?): fit again")
            stated = rate if form.get("target", "false_call_rate") == "false_call_rate" else None
            concerns = await run_in_threadpool(station.apply_concerns, product, threshold, stated)
            if concerns and form.get("confirm") != "yes":
                return page(
                    request,
                    "confirm.html",
                    product=product,
                    threshold=threshold,
                    concerns=concerns,
                    form=form,
                )
            target = {k: form[k] for k in ("target", "rate") if form.get(k)}
            record = await run_in_threadpool(
                station.apply, {product: threshold}, operator, {**target, "concerns": concerns}
            )
        except (DcamError, ValueError, KeyError) as exc:
            return page(request, "error.html", message=str(exc))
        note = f"calibration version {record.version} written: threshold {threshold:.3f}"
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

        def context() -> dict:
            return {
                "part": part,
                "label": station.labels().get(part.path),
                "history": station.store.history(part.path),
                "following": station.next_in_queue(part.product, part.id),
                "threshold": station.threshold(part.product),
            }

        return page(request, "part.html", **await run_in_threadpool(context))

    async def label_part(request: Request) -> Response:
        part = station.parts.get(request.path_params["id"])
        if part is None:
            return PlainTextResponse("no such part", 404)
        operator = request.cookies.get(OPERATOR_COOKIE)
        if not operator:
            return RedirectResponse(f"/operator?next=/part/{part.id}", 303)
        form = await request.form()
        try:
            await run_in_threadpool(
                station.store.add, part.path, str(form.get("label")), operator, part.product
            )
        except DcamError as exc:
            return PlainTextResponse(str(exc), 400)
        following = await run_in_threadpool(station.next_in_queue, part.product, part.id)
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
        buffer = io.StringIO()
        await run_in_threadpool(station.store.export_csv, buffer)
        headers = {"content-disposition": 'attachment; filename="labels.csv"'}
        return Response(buffer.getvalue(), media_type="text/csv", headers=headers)

    async def api_label(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("a JSON object")
        except ValueError:
            return JSONResponse({"error": 'send {"id" or "path", "label", "operator"}'}, 400)
        part = station.parts.get(str(body.get("id", ""))) or station.part_at(body.get("path"))
        if part is None:
            return JSONResponse({"error": "no such part"}, 404)
        try:
            label = await run_in_threadpool(
                station.store.add,
                part.path,
                str(body.get("label")),
                str(body.get("operator", "")),
                part.product,
            )
        except DcamError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"id": part.id, "path": part.path, "label": label.label})

    async def api_products(request: Request) -> Response:
        return JSONResponse([{"key": product_key(p), "product": p} for p in station.run.products()])

    async def api_parts(request: Request) -> Response:
        key = request.query_params.get("product")
        known, product = product_of(key)
        if key is not None and not known:
            return JSONResponse({"error": "no such product key (see /api/products)"}, 404)

        def rows() -> list[dict]:
            labels = station.labels()
            parts = station.queue(product) if key is not None else station.run.parts
            return [
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

        return JSONResponse(await run_in_threadpool(rows))

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
        Route("/api/products", refreshed(api_products)),
        Route("/api/parts", refreshed(api_parts)),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        station.store.close()  # folds the WAL back into the label file

    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=station.config.token)],
        lifespan=lifespan,
    )
