"""LoRA Studio: python app.py [--host H] [--port N] [--share | --no-share]"""

from __future__ import annotations

import argparse
import logging
import os
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


def _warm_imports() -> None:
    try:
        from studio.stack import import_ml_stack

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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.runs_dir:
        os.environ["STUDIO_RUNS"] = args.runs_dir

    from studio.jobs import runs_root
    from studio.ui import build_app, launch_kwargs  # gradio only: torch & co. load on first use

    # Serve first; warm the ML stack in the background so the first click doesn't wait for imports.
    threading.Thread(target=_warm_imports, name="warm-imports", daemon=True).start()
    share_link = want_share(args.share)
    demo = build_app()
    runs_root().mkdir(parents=True, exist_ok=True)
    try:
        demo.queue(default_concurrency_limit=8).launch(
            server_name=args.host, server_port=args.port, share=share_link,
            allowed_paths=[str(runs_root().resolve())], **launch_kwargs())
    except Exception as e:  # noqa: BLE001
        if share_link and "share" in str(e).lower():
            print("Could not create a public share link (no network?); serving locally only.", flush=True)
            demo.launch(server_name=args.host, server_port=args.port, share=False, **launch_kwargs())
        else:
            raise


if __name__ == "__main__":
    main()
