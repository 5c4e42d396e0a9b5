"""Server-rendered pages (Jinja2, autoescaped). The JavaScript in static/ only draws boxes,
handles keys and saves; everything a page shows is rendered here."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from .agreement import agreement_report
from .api import assignments, ctx_of, need_admin, need_user
from .db import STATUSES, Annotation, Annotator, Dataset, Item
from .deps import COOKIE, TEMPLATES
from .exchange import collect_ratings
from .review import FILTERS, PAGE_SIZE, read_results, review_entries
from .store import user_for_token
from .work import NotFound, annotation_state, item_view, load_assignment

router = APIRouter()
_env = None


def env() -> Any:
    global _env
    if _env is None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        _env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                           trim_blocks=True, lstrip_blocks=True)
        _env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.0f}%"
        _env.filters["num"] = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
        _env.filters["split_response"] = split_response
    return _env


def split_response(text: str) -> dict[str, str | None]:
    """A detector response for display: its reasoning (or the whole text) and its last answer."""
    reasoning = re.search(r"<reasoning>(.*?)</reasoning>", text, re.DOTALL)
    answers = re.findall(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    return {"reasoning": reasoning.group(1).strip() if reasoning else text, "answer": answers[-1] if answers else None}


def render(name: str, request: Request, code: int = 200, **context: Any) -> HTMLResponse:
    html = env().get_template(name).render(request=request, **context)
    return HTMLResponse(html, code)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, token: str | None = None) -> Response:
    """The login form; a login link (`?token=`) only fills it in and names the account. A GET
    never logs in: another site could otherwise log a visitor in as the attacker (login CSRF).
    The form's POST is same-origin only (LimitsMiddleware)."""
    if token is None:
        return render("login.html", request, user=None, error=None)
    with ctx_of(request).store.read() as session:
        user = user_for_token(session, token.strip())
    if user is None:
        return render("login.html", request, 401, user=None, error="That token is not valid.")
    return render("login.html", request, user=None, error=None, confirm=user.name, token=token.strip())


@router.post("/login")
async def login_form(request: Request) -> Response:
    form = await request.form()
    token = form.get("token")
    return _login(request, token if isinstance(token, str) else "")


def _login(request: Request, token: str) -> Response:
    with ctx_of(request).store.read() as session:
        user = user_for_token(session, token.strip())
    if user is None:
        return render("login.html", request, 401, user=None, error="That token is not valid.")
    response = RedirectResponse("/", 303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=ctx_of(request).secure_cookie, max_age=30 * 24 * 3600)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, status: str | None = None) -> Response:
    user = need_user(request)
    with ctx_of(request).store.read() as session:
        if user.is_admin:
            return _admin_home(request, user, session)
        mine = assignments(session, user)
    counts = {s: sum(a["status"] == s for a in mine) for s in STATUSES}
    shown = [a for a in mine if status is None or a["status"] == status]
    first_open = next((a["id"] for a in mine if a["status"] in ("todo", "draft")), None)
    return render("home.html", request, user=user, items=shown, counts=counts, total=len(mine),
                  status=status, statuses=STATUSES, first_open=first_open)


def _admin_home(request: Request, user: Any, session: Any) -> Response:
    datasets = []
    for ds in session.scalars(select(Dataset).order_by(Dataset.id)):
        n_items = session.scalar(select(func.count()).select_from(Item).where(Item.dataset_id == ds.id))
        by_status = dict(session.execute(
            select(Annotation.status, func.count()).join(Item, Annotation.item_id == Item.id)
            .where(Item.dataset_id == ds.id).group_by(Annotation.status)).all())
        kinds = dict(session.execute(select(Item.kind, func.count()).where(Item.dataset_id == ds.id)
                                     .group_by(Item.kind)).all())
        datasets.append({"name": ds.name, "path": ds.path, "n_items": n_items, "status": by_status, "kinds": kinds})
    people = []
    for a in session.scalars(select(Annotator).order_by(Annotator.id)):
        by_status = dict(session.execute(select(Annotation.status, func.count()).where(Annotation.annotator_id == a.id)
                                         .group_by(Annotation.status)).all())
        people.append({"name": a.name, "role": a.role, "status": by_status, "total": sum(by_status.values())})
    ctx = ctx_of(request)
    return render("admin.html", request, user=user, datasets=datasets, people=people, statuses=STATUSES,
                  double_share=ctx.double_share, results=[str(p) for p in ctx.results])


@router.get("/items/{item_id}", response_class=HTMLResponse)
def item_page(item_id: int, request: Request) -> Response:
    user = need_user(request)
    ctx = ctx_of(request)
    with ctx.store.read() as session:
        if user.is_admin:
            row = session.execute(select(Item, Dataset.name).join(Dataset, Item.dataset_id == Dataset.id)
                                  .where(Item.id == item_id)).first()
            if row is None:
                raise HTTPException(404, "no such item")
            q = (select(Annotation, Annotator.name).join(Annotator, Annotation.annotator_id == Annotator.id)
                 .where(Annotation.item_id == item_id).order_by(Annotation.rank))
            return render("item_admin.html", request, user=user, item=item_view(row[0], row[1], None),
                          record=row[0].row, annotations=[annotation_state(a, n) for a, n in session.execute(q)])
        try:
            item, ds, annotation = load_assignment(session, user, item_id)
        except NotFound:
            return render("message.html", request, 404, user=user, title="Not found",
                          message="This item is not among your assignments.")
        ids = [a["id"] for a in assignments(session, user)]
    pos = ids.index(item_id)
    nav = {"prev": ids[pos - 1] if pos > 0 else None, "next": ids[pos + 1] if pos + 1 < len(ids) else None,
           "pos": pos + 1, "total": len(ids)}
    view = item_view(item, ds, annotation)
    state = annotation_state(annotation)
    template = "annotate.html" if item.kind == "annotate" else "rate.html"
    page_data = {"item": view, "annotation": state, "nav": nav, "taxonomy": ctx.taxonomy.to_dict()}
    return render(template, request, user=user, item=view, annotation=state, nav=nav, taxonomy=ctx.taxonomy,
                  page_data=page_data)


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, file: int = 0, filter: str = "all", min_gap: float = 1.0, page: int = 1) -> Response:
    user = need_admin(request)
    ctx = ctx_of(request)
    files = [str(p) for p in ctx.results]
    if not files:
        return render("review.html", request, user=user, files=files, entries=[], total=0, kind=None, file=0,
                      filter=filter, filters=FILTERS, min_gap=min_gap, page=1, pages=1)
    if not 0 <= file < len(files):
        raise HTTPException(404, f"file={file}: {len(files)} results file(s) loaded")
    if filter not in FILTERS:
        filter = "all"
    results = read_results(ctx.results[file])
    with ctx.store.read() as session:
        entries = review_entries(session, results, filter, min_gap)
    pages = max(1, -(-len(entries) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    return render("review.html", request, user=user, files=files, file=file, kind=results.kind,
                  entries=entries[(page - 1) * PAGE_SIZE: page * PAGE_SIZE], total=len(entries),
                  filter=filter, filters=FILTERS, min_gap=min_gap, page=page, pages=pages,
                  skipped=results.skipped_lines)


@router.get("/agreement", response_class=HTMLResponse)
def agreement_page(request: Request) -> Response:
    user = need_admin(request)
    with ctx_of(request).store.read() as session:
        report = agreement_report(collect_ratings(session))
    return render("agreement.html", request, user=user, report=report)
