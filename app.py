"""LoRA Studio: python app.py [--host H] [--port N] [--share | --no-share]"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading


def on_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def want_share(flag: bool | None) -> bool:
    """Colab: a public link by default. A Space: never (it is public already). Elsewhere: only if asked."""
    if on_space():
        return False
    return on_colab() if flag is None else flag


SHARE_SERVER = ("api.gradio.app", 443)
MAX_UPLOAD = os.environ.get("STUDIO_MAX_UPLOAD", "200mb")  # per file, Gradio's size syntax


def share_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(SHARE_SERVER, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_share(flag: bool | None) -> tuple[bool, str | None]:
    """(share?, a one-line note to print). Offline, Gradio's own message is a multi-line how-to."""
    if not want_share(flag):
        return False, None
    if not share_reachable():
        return False, "Could not create a public share link (the share service is unreachable); serving locally only."
    return True, None


OWNER_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN")
_TRUE = {"1", "true", "yes", "on"}


def will_be_shared(args) -> bool:
    """The same decision main() takes below, made before any import: strangers will reach this app."""
    flag = lambda name: os.environ.get(name, "").strip().lower() in _TRUE  # noqa: E731
    return bool(args.shared or args.demo or want_share(args.share) or on_space() or flag("STUDIO_SHARED")
                or flag("STUDIO_DEMO"))


def drop_owner_token() -> None:
    """A shared app keeps no owner token in its process: os.environ can be cleaned, but /proc/<pid>/environ
    keeps what the process started with, so the app starts itself again (same pid, same arguments) without
    the token variables. Nothing in a shared app pushes with the owner's token (a page's push takes the
    visitor's sign-in or a typed token; studio.hub), so the token is dropped, not handed over."""
    if not any(name in os.environ for name in OWNER_TOKEN_VARS):
        return
    env = {k: v for k, v in os.environ.items() if k not in OWNER_TOKEN_VARS}
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # nor the cached `hf auth login` token, sent by itself
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def read_accounts(spec: str) -> dict[str, str]:
    """Accounts for Gradio's sign-in (`--auth` / STUDIO_AUTH): a file of `name:password` lines, or the same
    pairs separated by commas. A bad line stops the start with one line (never echoing a password)."""
    from pathlib import Path

    spec = (spec or "").strip()
    if not spec:
        return {}
    text = Path(spec).read_text(encoding="utf-8") if Path(spec).is_file() else spec.replace(",", "\n")
    accounts = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise SystemExit(f"accounts (--auth / STUDIO_AUTH): entry {number} is not 'name:password'")
        accounts[name.strip()] = password
    return accounts


def who_line(accounts: dict) -> str:
    """The launch line saying who a visitor is here (docs/budgets.md "Who a visitor is")."""
    from studio.access import demo_mode, owners, shared_mode, trusted_proxies

    if not shared_mode():
        return "Local app: whoever opens it is its owner (nothing is checked or counted)."
    if accounts:
        named = ", ".join(sorted(accounts)[:8]) + (" …" if len(accounts) > 8 else "")
        owner = [n for n in accounts if n.lower() in owners()]
        return (f"Shared app with sign-in: accounts {named}; each has budgets of its own"
                + (f"; owners: {', '.join(owner)}" if owner else "; no account is an owner (STUDIO_OWNERS)"))
    split = f"per address behind {trusted_proxies()}" if trusted_proxies() else "as ONE anonymous pool"
    space = " Signed-in Hugging Face visitors each have their own." if os.environ.get("SPACE_ID") else ""
    mode = "Demo" if demo_mode() else "Shared app"
    return (f"{mode}: anonymous visitors share budgets {split} (one place in the training line, uploads, runs)."
            f"{space} Give people accounts with --auth to count them apart.")


def check_private_storage(runs) -> None:
    """A shared app's private files (runs, visitors' uploads, the server's secret) must not sit where Gradio's
    file route serves every file to whoever names its path (its temp folder)."""
    import tempfile
    from pathlib import Path

    served = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    runs = Path(runs).resolve()
    if runs == served or served in runs.parents:
        raise SystemExit(f"the runs folder {runs} is inside Gradio's served temp folder {served}: pick another "
                         "--runs-dir (what a shared app keeps there would have a public address)")


def _warm_imports() -> None:
    try:
        from studio.data.isolate import warm
        from studio.stack import import_ml_stack

        warm()  # the helper that forks a child per uploaded file
        import_ml_stack()
    except Exception:  # noqa: BLE001 - the handler that needs it will report the problem
        logging.getLogger("studio").exception("background import failed")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="LoRA Studio")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space() else "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    share = p.add_mutually_exclusive_group()
    share.add_argument("--share", dest="share", action="store_true", default=None, help="public share link")
    share.add_argument("--no-share", dest="share", action="store_false")
    p.add_argument("--runs-dir", help="where runs are kept (default runs/; on Colab e.g. a Drive folder)")
    p.add_argument("--shared", action="store_true", default=None,
                   help="treat visitors as strangers even without a share link (on with --share and on a Space)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="public demo (also STUDIO_DEMO=1): chat and evaluation for all; training, export and push only "
                        "for STUDIO_OWNERS / the Space's author (and signed-in visitors with STUDIO_DEMO_SIGNED_IN=1)")
    p.add_argument("--max-job-minutes", type=float, default=None,
                   help="shared app: stop a visitor's training job after this many minutes, checkpointed and resumable "
                        "(also STUDIO_MAX_JOB_MINUTES; default 30; 0: no limit; the owner's own jobs are exempt)")
    p.add_argument("--auth", default=None, metavar="FILE",
                   help="accounts for a shared app (also STUDIO_AUTH): a file of 'name:password' lines, or "
                        "'name:password,name2:password2'; each visitor signs in and has budgets of their own, "
                        "anonymous visitors otherwise share one (docs/budgets.md); names in STUDIO_OWNERS are owners")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="let recipes from the page set trust_remote_code (off by default; never for a public app)")
    args = p.parse_args(argv)
    if argv is None and will_be_shared(args):
        drop_owner_token()  # before anything reads it: re-executes this very command without HF_TOKEN
    from studio.errors import configure_logging

    configure_logging()  # tokens redacted in every log line, tracebacks included
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no CPU 4-bit kernels package": not actionable
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.runs_dir:
        os.environ["STUDIO_RUNS"] = args.runs_dir

    from studio.access import runs_root
    from studio.ui import build_app, launch_kwargs, start_queue  # gradio only: torch & co. load on first use

    # Serve first; warm the ML stack in the background so the first click doesn't wait for imports.
    threading.Thread(target=_warm_imports, name="warm-imports", daemon=True).start()
    share_link, note = resolve_share(args.share)
    if note:
        print(note, flush=True)
    if args.shared or share_link or want_share(args.share) or on_space():
        # strangers can call every endpoint: only samples, uploads, runs and Hub ids (studio.access)
        os.environ["STUDIO_SHARED"] = "1"
    if args.allow_remote_code:
        os.environ["STUDIO_ALLOW_REMOTE_CODE"] = "1"
    if args.max_job_minutes is not None:
        os.environ["STUDIO_MAX_JOB_MINUTES"] = f"{args.max_job_minutes:g}"
    if args.demo:
        os.environ["STUDIO_DEMO"] = "1"
    if os.environ.get("STUDIO_DEMO", "").strip().lower() in {"1", "true", "yes", "on"}:
        os.environ["STUDIO_SHARED"] = "1"  # a demo is public: visitors are strangers
    from studio.access import keep_owner_token_out, shared_mode, trusted_proxies

    accounts = read_accounts(args.auth if args.auth is not None else os.environ.get("STUDIO_AUTH", ""))
    if shared_mode():
        keep_owner_token_out()  # visitors' Hub reads go with their own sign-in or none (studio.access)
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, and a share link's tunnel is 127.0.0.1: on a
        # shared app only the proxies the owner names are believed (none by default), so no header buys a budget
        os.environ["FORWARDED_ALLOW_IPS"] = trusted_proxies()
        check_private_storage(runs_root())
    demo = build_app()
    runs_root().mkdir(parents=True, exist_ok=True)
    from studio.ownership import prepare
    from studio.ui.common import quiet_when_idle

    prepare(runs_root())  # the server's secret and the ownership records, before the first visitor
    demo = start_queue(demo)  # queue limits: docs/budgets.md
    quiet_when_idle(demo)  # an idle app costs ~0.3 % of a core, not 4 %
    print(who_line(accounts), flush=True)
    demo.launch(
        server_name=args.host, server_port=args.port, share=share_link,
        max_file_size=MAX_UPLOAD,  # a bigger upload is refused by Gradio before it reaches a handler
        auth=[(name, password) for name, password in accounts.items()] or None,
        **launch_kwargs())  # no allowed_paths: files reach the browser only through the temp dir


if __name__ == "__main__":
    main()
