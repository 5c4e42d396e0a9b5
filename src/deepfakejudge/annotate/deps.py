"""What the app, its API and its pages share: the context a running app holds, the login cookie, the
template folder and the user of a request. Its own module so that `app.py` (which mounts `api`
and `pages`) and those two modules import it, not each other.

Nothing here imports FastAPI: `app.py` must import without it to say which extra to install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .db import Store
from .store import User, user_for_token
from .taxonomy import Taxonomy

COOKIE = "dfj_token"
TEMPLATES = Path(__file__).with_name("templates")


@dataclass
class AppContext:
    store: Store
    taxonomy: Taxonomy
    results: tuple[Path, ...] = ()
    double_share: float = 0.2
    seed: int = 0
    secure_cookie: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def request_user(request: Any) -> User | None:
    """The user of a request's login token (cookie, or `Authorization: Bearer`), or None."""
    token = request.cookies.get(COOKIE)
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    ctx: AppContext = request.app.state.ctx
    with ctx.store.read() as session:
        return user_for_token(session, token)
