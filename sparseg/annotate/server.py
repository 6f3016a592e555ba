"""The annotation web app (Starlette) and how `sparseg annotate` serves it (uvicorn).

API (ids are image paths relative to the root without suffix; anything not in the list is a 404):

- ``GET  /api/session``: classes, palette, images with sizes and labeled pixels, progress, model or not;
- ``GET  /api/image/{id}``: the image file;
- ``GET  /api/label/{id}``: the label map, one byte per pixel row by row (254 = unlabeled), with its version
  as ``ETag``;
- ``PUT  /api/label/{id}``: replace it (``application/octet-stream`` as above, or ``image/png``); needs
  ``If-Match`` with the version it was based on (428 without, 412 when the file changed since);
- ``GET  /api/prediction/{id}``: with a checkpoint, 3 planes of H x W bytes: class, max-probability x 255,
  (1 - normalised entropy) x 255;
- ``GET  /api/ranking``: with a checkpoint, the "label next" scores so far and the scoring progress.

Errors are JSON ``{"error": "..."}`` with a 4xx status. Requests other than GET/HEAD whose ``Origin`` is
not the server's own are refused (403), whatever the client.
"""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sparseg.annotate.assist import ModelAssist, Ranker
from sparseg.annotate.store import ImageEntry, LabelError, LabelStore, VersionConflict
from sparseg.data.datasets import to_rgb

STATIC = Path(__file__).parent / "static"
BROWSER_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                       ".bmp": "image/bmp"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
NO_STORE = {"Cache-Control": "no-store"}


def upload_limit(entry: ImageEntry) -> int:
    """Largest accepted label body: one byte per pixel plus room for PNG framing."""
    return entry.size[0] * entry.size[1] * 101 // 100 + 65536


def etag(version: str) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def matched_versions(header: str) -> list[str]:
    """The versions an ``If-Match`` header names (quotes and weak prefixes dropped)."""
    return [v.strip().removeprefix("W/").strip('"') for v in header.split(",") if v.strip()]


class SameOriginMiddleware:
    """Refuses (403) state-changing requests whose ``Origin`` header is not this server's own origin."""

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in self.SAFE:
            headers = Headers(scope=scope)
            origin, own = headers.get("origin"), f"{scope['scheme']}://{headers.get('host', '')}"
            if origin is not None and origin != own:
                response = JSONResponse({"error": f"{scope['method']} from origin {origin} refused: only pages "
                                                  f"of {own} may change labels"}, status_code=403)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(store: LabelStore, assist: ModelAssist | None = None,
               allowed_hosts: list[str] | None = None, ranker: Ranker | None = None) -> Starlette:
    """The app over ``store``; ``allowed_hosts`` (Host header names) guards a loopback server against DNS
    rebinding; ``ranker`` scores the images for "label next"."""

    def entry_of(request: Request) -> ImageEntry:
        image_id = request.path_params["image_id"]
        try:
            return store.entry(image_id)
        except KeyError:
            raise HTTPException(404, f"no image '{image_id}' in the list under {store.root}") from None

    async def session(request: Request) -> JSONResponse:
        labeled, total = store.progress()
        return JSONResponse({
            "classes": list(store.classes.names),
            "palette": [list(c) for c in store.classes.palette],
            "unlabeled": 254,
            "images": [{"id": e.id, "width": e.size[0], "height": e.size[1],
                        "labeled_pixels": store.labeled_pixels(e.id)} for e in store.images.values()],
            "progress": {"labeled": labeled, "total": total},
            "model": assist is not None,
            "ranking": ranker is not None,
            "out": str(store.out),
        }, headers=NO_STORE)

    async def image(request: Request) -> Response:
        entry = entry_of(request)
        media_type = BROWSER_IMAGE_TYPES.get(entry.path.suffix.lower())
        if media_type is not None:
            return FileResponse(entry.path, media_type=media_type)
        with Image.open(entry.path) as source:  # e.g. TIFF: converted for the browser, 16-bit as in training
            buffer = io.BytesIO()
            to_rgb(source, entry.path).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    async def get_label(request: Request) -> Response:
        entry = entry_of(request)
        label, version = await run_in_threadpool(store.read_versioned, entry.id)
        return Response(label.tobytes(), media_type="application/octet-stream", headers={**NO_STORE, **etag(version)})

    async def put_label(request: Request) -> JSONResponse:
        entry = entry_of(request)
        limit = upload_limit(entry)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"label body of {declared} bytes is over the {limit}-byte limit for {entry.id}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"label body is over the {limit}-byte limit for {entry.id}")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if "if-match" not in request.headers:
            raise HTTPException(428, f"{entry.id}: send If-Match with the ETag of the labels this edit is based on")
        versions = matched_versions(request.headers["if-match"])
        try:
            counts, version = await run_in_threadpool(store.save, entry.id, bytes(body), content_type, versions)
        except LabelError as err:
            status = 415 if "content type" in str(err) else 422
            raise HTTPException(status, f"{entry.id}: {err}") from None
        except PermissionError as err:
            raise HTTPException(403, str(err)) from None
        except VersionConflict as err:
            return JSONResponse({"error": str(err)}, status_code=412, headers=etag(err.current))
        labeled, total = store.progress()
        return JSONResponse({"id": entry.id, "labeled_pixels": int(counts.sum()), "version": version,
                             "progress": {"labeled": labeled, "total": total}}, headers=etag(version))

    async def prediction(request: Request) -> Response:
        entry = entry_of(request)
        if assist is None:
            raise HTTPException(404, "no model: start sparseg annotate with --checkpoint")
        maps = await run_in_threadpool(assist.maps, entry.id, entry.path)
        return Response(np.ascontiguousarray(maps).tobytes(), media_type="application/octet-stream")

    async def ranking(request: Request) -> JSONResponse:
        if ranker is None:
            raise HTTPException(404, "no ranking: start sparseg annotate with --checkpoint")
        return JSONResponse(ranker.snapshot(), headers=NO_STORE)

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_STORE)

    async def error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    routes = [
        Route("/", index),
        Route("/api/session", session),
        Route("/api/image/{image_id:path}", image),
        Route("/api/label/{image_id:path}", get_label, methods=["GET"]),
        Route("/api/label/{image_id:path}", put_label, methods=["PUT"]),
        Route("/api/prediction/{image_id:path}", prediction),
        Route("/api/ranking", ranking),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    middleware.append(Middleware(SameOriginMiddleware))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: error})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the URL printed is the one served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot serve on {host}:{port}: {err.strerror or err} (try --port 0 for a free port)") from None
    sock.listen(128)
    return sock


def serve(store: LabelStore, assist: ModelAssist | None, host: str, port: int, ranker: Ranker | None = None) -> None:
    """Serve the app until interrupted; warn when the host is not loopback (no authentication)."""
    import uvicorn

    loopback = host in LOOPBACK_HOSTS
    if not loopback:
        print(f"warning: serving on {host}: anyone who can reach this port can see the images and change the "
              "labels (there is no authentication); use the default 127.0.0.1 unless you mean it", file=sys.stderr)
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    labeled, total = store.progress()
    print(f"{total} images under {store.root} ({labeled} labeled); labels in {store.out}")
    print(f"open http://{shown_host}:{sock.getsockname()[1]}/  (Ctrl+C to stop)", flush=True)
    app = create_app(store, assist, allowed_hosts=["127.0.0.1", "localhost", "[::1]"] if loopback else None,
                     ranker=ranker)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
