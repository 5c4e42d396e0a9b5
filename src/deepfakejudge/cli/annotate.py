"""`dfj annotate`: the annotation and review app (see deepfakejudge.annotate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MissingExtra, UsageError

DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="annotation, rating and review app in the browser",
                       description="Serve the annotation app: annotate images (class, boxes, expressions, rationale), "
                                   "rate explanations (1-5, A/B), review judge/detector results, measure agreement.")
    p.add_argument("--data", action="append", required=True, metavar="D",
                   help="canonical JSONL (or split folder); repeatable. Rows with response_a/response_b are compared, "
                        "rows with response are rated, other rows are annotated")
    p.add_argument("--db", required=True, metavar="URL",
                   help="SQLAlchemy URL (postgresql+psycopg://user@host/db) or a file path for SQLite")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--annotator", action="append", default=[], metavar="NAME",
                   help="create an annotator and print their login link (repeatable)")
    p.add_argument("--admin", default="admin", metavar="NAME", help="admin account, created on first run (default admin)")
    p.add_argument("--new-token", action="append", default=[], metavar="NAME",
                   help="issue a fresh login token for an existing account (the old one stops working)")
    p.add_argument("--double-share", type=float, default=None, metavar="F",
                   help="share of items given to two annotators, 0..1 (default: stored value, first run 0.2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the assignment and A/B order (default: stored, 0)")
    p.add_argument("--taxonomy", default=None, metavar="YAML", help="artifact taxonomy and rubric (default: bundled)")
    p.add_argument("--results", action="append", default=[], metavar="PATH",
                   help="results JSONL of dfj judge / dfj detect to review (repeatable)")
    p.add_argument("--import", dest="import_file", default=None, metavar="JSONL",
                   help="import canonical records (e.g. an earlier export) as annotations, then serve")
    p.add_argument("--import-as", default=None, metavar="NAME",
                   help="annotator the imported rows belong to (default: each row's annotation.annotator)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="write <dataset>.jsonl per dataset and agreement.json into DIR, then exit without serving")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..annotate.project import export_all, open_project

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be 1..65535")
    opened = open_project(args.db, args.data, annotators=args.annotator, admin=args.admin,
                          double_share=args.double_share, seed=args.seed, taxonomy=args.taxonomy,
                          results=args.results, new_tokens=args.new_token, import_file=args.import_file,
                          import_as=args.import_as)
    problems = 0
    for load in opened.loads:
        print(f"{load.path}: dataset {load.dataset!r}, {load.added} new item(s), {load.updated} updated, "
              f"{len(load.problems)} problem(s)", file=sys.stderr)
        for line in load.problems:
            print(f"  {line}", file=sys.stderr)
        problems += len(load.problems)
    a = opened.assignment
    print(f"{a.items} item(s), {a.annotators} annotator(s), {a.double_items} marked for two annotators, "
          f"{a.new_assignments} new assignment(s)", file=sys.stderr)
    if opened.imported is not None:
        print(f"--import: {opened.imported.imported} row(s) imported, {len(opened.imported.problems)} problem(s)",
              file=sys.stderr)
        for line in opened.imported.problems:
            print(f"  {line}", file=sys.stderr)
    if args.export is not None:
        for r in export_all(opened.ctx.store, args.export):
            print(f"{args.export}/{r.dataset}.jsonl: {r.rows} row(s) ({r.not_done} of {r.items} items not done)")
        folders = sorted({str(Path(d).resolve().parent) for d in args.data})
        print("images stay in the loaded data's folder; judge the export with "
              + " ".join(f"--image-root {f}" for f in folders), file=sys.stderr)
        opened.ctx.store.close()
        return 0
    return serve(opened, args.host, args.port)


def serve(opened, host: str, port: int) -> int:  # noqa: ANN001
    try:
        import uvicorn
    except ImportError:
        raise MissingExtra("dfj annotate needs uvicorn: pip install 'deepfakejudge[annotate]'") from None
    from ..annotate.app import create_app

    app = create_app(opened.ctx)
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {host} exposes the app beyond this machine; tokens travel in clear text "
              "unless a TLS proxy sits in front", file=sys.stderr)
    for name, token in opened.tokens.items():
        print(f"login {name}: {base}/login?token={token}")
    if not opened.tokens:
        print("(existing accounts keep their tokens; --new-token NAME issues a fresh one)")
    print(f"serving {base}  (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    opened.ctx.store.close()
    return 0
