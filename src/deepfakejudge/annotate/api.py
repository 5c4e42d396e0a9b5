"""JSON API: items, saves, agreement, export/import, annotators, assignment, review.

Every route needs a token; admin routes answer 403 to annotators; an item that is not the
caller's answers 404. Errors are JSON: {"error": message, "field": name} (422 for a bad field,
409 with "current" for a stale version).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from ..data.canonical import InputError
from .agreement import agreement_report
from .assignment import assign, check_share
from .db import Annotation, Annotator, Dataset, Item
from .deps import AppContext, request_user
from .exchange import collect_ratings, export_rows, import_rows
from .review import FILTERS, PAGE_SIZE, read_results, review_entries
from .store import User, add_annotator, new_token, set_setting
from .work import Conflict, NotFound, annotation_state, item_view, load_assignment, save

router = APIRouter()


def ctx_of(request: Request) -> AppContext:
    return request.app.state.ctx


def need_user(request: Request) -> User:
    user = request_user(request)
    if user is None:
        raise HTTPException(401, "log in first: open the login link printed by dfj annotate, or send Authorization: Bearer TOKEN")
    return user


def need_admin(request: Request) -> User:
    user = need_user(request)
    if not user.is_admin:
        raise HTTPException(403, "this needs an admin token")
    return user


async def json_body(request: Request) -> Any:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise InputError("<body>", "send JSON with Content-Type: application/json")
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError("<body>", f"malformed JSON ({exc})") from None


def install_error_handlers(app: Any) -> None:
    @app.exception_handler(InputError)
    async def _invalid(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": f"field '{exc.field}': {exc.message}", "field": exc.field}, 422)

    @app.exception_handler(NotFound)
    async def _missing(_request: Request, _exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": "no such item among your assignments"}, 404)

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({
            "error": f"this item was saved elsewhere meanwhile (now version {exc.current['version']}, "
                     f"{exc.current['updated_at']}); reload to see it, then redo your change",
            "current": exc.current}, 409)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 401 and not request.url.path.startswith(("/api/", "/img/")):
            from fastapi.responses import RedirectResponse
            return RedirectResponse("/login", 303)
        return JSONResponse({"error": exc.detail}, exc.status_code)


@router.get("/api/me")
def me(request: Request) -> dict[str, Any]:
    user = need_user(request)
    return {"name": user.name, "role": user.role}


def assignments(session: Any, user: User) -> list[dict[str, Any]]:
    q = (select(Item, Dataset.name, Annotation).join(Dataset, Item.dataset_id == Dataset.id)
         .join(Annotation, Annotation.item_id == Item.id).where(Annotation.annotator_id == user.id)
         .order_by(Item.dataset_id, Item.position))
    return [{"id": item.id, "dataset": ds, "sample_id": item.sample_id, "kind": item.kind,
             "status": a.status, "version": a.version} for item, ds, a in session.execute(q)]


@router.get("/api/items")
def list_items(request: Request) -> dict[str, Any]:
    user = need_user(request)
    with ctx_of(request).store.read() as session:
        if not user.is_admin:
            return {"items": assignments(session, user)}
        q = (select(Item, Dataset.name).join(Dataset, Item.dataset_id == Dataset.id)
             .order_by(Item.dataset_id, Item.position))
        statuses: dict[int, list[dict[str, Any]]] = {}
        pairs = select(Annotation, Annotator.name).join(Annotator, Annotation.annotator_id == Annotator.id)
        for a, name in session.execute(pairs):
            statuses.setdefault(a.item_id, []).append({"annotator": name, "status": a.status, "version": a.version})
        return {"items": [{"id": i.id, "dataset": ds, "sample_id": i.sample_id, "kind": i.kind, "double": i.double,
                           "annotations": statuses.get(i.id, [])} for i, ds in session.execute(q)]}


@router.get("/api/items/{item_id}")
def get_item(item_id: int, request: Request) -> dict[str, Any]:
    user = need_user(request)
    with ctx_of(request).store.read() as session:
        if user.is_admin:
            row = session.execute(select(Item, Dataset.name).join(Dataset, Item.dataset_id == Dataset.id)
                                  .where(Item.id == item_id)).first()
            if row is None:
                raise NotFound(item_id)
            item, ds = row
            q = (select(Annotation, Annotator.name).join(Annotator, Annotation.annotator_id == Annotator.id)
                 .where(Annotation.item_id == item_id).order_by(Annotation.rank))
            return {"item": item_view(item, ds, None), "record": item.row,
                    "annotations": [annotation_state(a, name) for a, name in session.execute(q)]}
        item, ds, annotation = load_assignment(session, user, item_id)
        return {"item": item_view(item, ds, annotation), "annotation": annotation_state(annotation)}


@router.put("/api/items/{item_id}/annotation")
async def put_annotation(item_id: int, request: Request) -> dict[str, Any]:
    user = await run_in_threadpool(need_user, request)
    payload = await json_body(request)
    ctx = ctx_of(request)

    def write() -> dict[str, Any]:
        with ctx.store.write() as session:
            return save(session, user, item_id, payload, ctx.taxonomy.names)

    return {"annotation": await run_in_threadpool(write)}


@router.get("/img/{item_id}")
def image(item_id: int, request: Request) -> FileResponse:
    from pathlib import Path

    user = need_user(request)
    with ctx_of(request).store.read() as session:
        if user.is_admin:
            item = session.get(Item, item_id)
            if item is None:
                raise NotFound(item_id)
        else:
            item = load_assignment(session, user, item_id)[0]
        root = Path(session.get(Dataset, item.dataset_id).path).parent.resolve()
    path = (root / item.image).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(404, "image not available")
    return FileResponse(path)


@router.get("/api/agreement")
def agreement(request: Request, download: bool = False) -> Response:
    need_admin(request)
    with ctx_of(request).store.read() as session:
        report = agreement_report(collect_ratings(session))
    headers = {"content-disposition": 'attachment; filename="agreement.json"'} if download else {}
    return JSONResponse(report, headers=headers)


@router.get("/api/export")
def export(request: Request, dataset: str, annotator: str | None = None) -> Response:
    need_admin(request)
    with ctx_of(request).store.read() as session:
        try:
            rows, report = export_rows(session, dataset, annotator=annotator)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    name = f"{dataset}.annotated.jsonl" if annotator is None else f"{dataset}.{annotator}.jsonl"
    return Response(body, media_type="application/x-ndjson", headers={
        "content-disposition": f'attachment; filename="{name}"', "x-dfj-rows": str(report.rows),
        "x-dfj-not-done": str(report.not_done)})


@router.post("/api/import")
async def import_(request: Request, annotator: str | None = None, dataset: str | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    await run_in_threadpool(need_admin, request)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError("file", "attach the JSONL file as the form field 'file'")
        data = await upload.read()
        annotator = annotator or (form.get("annotator") or None)
    else:
        data = await request.body()
    ctx = ctx_of(request)

    def write() -> Any:
        with ctx.store.write() as session:
            return import_rows(session, data.splitlines(), ctx.taxonomy.names, annotator=annotator,
                               dataset=dataset, overwrite=overwrite)

    report = await run_in_threadpool(write)
    return {"imported": report.imported, "problems": list(report.problems)}


@router.get("/api/annotators")
def annotators(request: Request) -> dict[str, Any]:
    need_admin(request)
    with ctx_of(request).store.read() as session:
        counts: dict[int, dict[str, int]] = {}
        for a in session.scalars(select(Annotation)):
            counts.setdefault(a.annotator_id, {}).setdefault(a.status, 0)
            counts[a.annotator_id][a.status] += 1
        return {"annotators": [{"name": a.name, "role": a.role, "progress": counts.get(a.id, {})}
                               for a in session.scalars(select(Annotator).order_by(Annotator.id))]}


@router.post("/api/annotators")
async def create_annotator(request: Request) -> dict[str, Any]:
    await run_in_threadpool(need_admin, request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InputError("<body>", "must be an object with name and role")
    name, role = body.get("name"), body.get("role", "annotator")
    ctx = ctx_of(request)

    def write() -> tuple[str, Any]:
        with ctx.store.write() as session:
            try:
                token = add_annotator(session, name if isinstance(name, str) else "", role)
            except ValueError as exc:
                raise InputError("name" if "name" in str(exc) else "role", str(exc)) from None
            if token is None:
                raise HTTPException(409, f"annotator {name!r} exists; issue a new token with "
                                         f"POST /api/annotators/{name}/token")
            return token, assign(session, ctx.double_share, ctx.seed)

    token, report = await run_in_threadpool(write)
    return {"name": name, "role": role, "token": token, "login": f"/login?token={token}",
            "new_assignments": report.new_assignments}


@router.post("/api/annotators/{name}/token")
def rotate_token(name: str, request: Request) -> dict[str, Any]:
    need_admin(request)
    with ctx_of(request).store.write() as session:
        try:
            token = new_token(session, name)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None
    return {"name": name, "token": token, "login": f"/login?token={token}"}


@router.post("/api/assign")
async def run_assign(request: Request) -> dict[str, Any]:
    await run_in_threadpool(need_admin, request)
    body = await json_body(request) if request.headers.get("content-length", "0") != "0" else {}
    ctx = ctx_of(request)
    share = body.get("double_share", ctx.double_share) if isinstance(body, dict) else ctx.double_share
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise InputError("double_share", "must be a number between 0 and 1")
    try:
        check_share(float(share))
    except ValueError as exc:
        raise InputError("double_share", str(exc)) from None
    def write() -> Any:
        with ctx.store.write() as session:
            set_setting(session, "double_share", str(float(share)))
            return assign(session, float(share), ctx.seed)

    report = await run_in_threadpool(write)
    ctx.double_share = float(share)
    return {"annotators": report.annotators, "items": report.items, "double_items": report.double_items,
            "new_assignments": report.new_assignments, "double_share": ctx.double_share}


@router.get("/api/review")
def review(request: Request, file: int = 0, filter: str = "all", min_gap: float = 1.0, page: int = 1) -> dict[str, Any]:
    need_admin(request)
    ctx = ctx_of(request)
    if not 0 <= file < len(ctx.results):
        raise HTTPException(404, f"file={file}: {len(ctx.results)} results file(s) loaded (--results PATH)")
    if filter not in FILTERS:
        raise InputError("filter", f"{filter!r} is not one of {', '.join(FILTERS)}")
    results = read_results(ctx.results[file])
    with ctx.store.read() as session:
        entries = review_entries(session, results, filter, min_gap)
    start = (max(page, 1) - 1) * PAGE_SIZE
    return {"file": str(results.path), "kind": results.kind, "total": len(entries),
            "page": max(page, 1), "entries": entries[start:start + PAGE_SIZE]}
