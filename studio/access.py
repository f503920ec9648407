"""Who may read what: run names, run folders, data and model sources, remote code.

A studio behind a share link or on a public Space is called by strangers, through the page and
straight through its API. Everything a visitor names (a run, a data file, a model folder) passes
through here before it touches the disk. The person who started the app decides the rest:

- shared mode (`STUDIO_SHARED=1`, set by `app.py` with a share link or on a Space): visitors read only
  bundled samples, their own uploads, preference files under ``runs/pairs`` and the runs folder's
  runs; Hub ids stay allowed. Locally (the default) the owner is the visitor and any path is fine.
- remote code (`STUDIO_ALLOW_REMOTE_CODE=1`, `app.py --allow-remote-code`): only then may a recipe
  from the page set `trust_remote_code`. Recipe files run from the command line are the owner's own.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from studio.errors import StudioError

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def shared_mode() -> bool:
    """True when strangers can reach the app (share link, Space, or the owner said so)."""
    return _flag("STUDIO_SHARED") or bool(os.environ.get("SPACE_ID"))


def remote_code_allowed() -> bool:
    return _flag("STUDIO_ALLOW_REMOTE_CODE")


def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    return Path(runs_dir or os.environ.get("STUDIO_RUNS") or "runs").expanduser()


def check_run_name(name: str, what: str = "run name") -> str:
    """A run folder's name: letters, digits, '.', '_' and '-'; no separators, no '..', nothing absolute."""
    name = str(name or "").strip()
    if not _RUN_NAME.match(name) or ".." in name:
        raise StudioError(
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 100, no '..' "
            "or '/'); runs always live in the runs folder"
        )
    return name


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def resolve_run(ref: str | os.PathLike, runs_dir=None, must_exist: bool = True) -> Path:
    """A run named by a visitor (its name, or a path to it) → its folder inside the runs folder."""
    root = runs_root(runs_dir)
    text = str(ref or "").strip()
    if not text:
        raise StudioError("no run given: pick a run from the runs folder")
    path = Path(text).expanduser()
    if len(path.parts) == 1:
        path = root / check_run_name(text)
    elif not _inside(path, root) and (shared_mode() or not path.is_dir()):
        # locally the owner may point at a run folder anywhere; a visitor only inside the runs folder
        raise StudioError(f"{text}: not a run in the runs folder ({root})")
    if must_exist and not path.is_dir():
        raise StudioError(f"{text}: no such run in {root}")
    return path


def upload_dirs() -> list[Path]:
    """Where Gradio keeps this server's uploads (what a visitor sent is theirs to read back)."""
    base = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return [Path(base)]


def check_data_source(source: str) -> str:
    """A data source named from the page: in shared mode no arbitrary server path."""
    source = str(source or "").strip()
    if not shared_mode() or not source:
        return source
    from studio.data.sources import SAMPLES

    if source in SAMPLES or source.startswith("sample:"):
        return source
    path = Path(source).expanduser()
    allowed = [*upload_dirs(), runs_root() / "pairs"]
    if any(_inside(path, folder) for folder in allowed) and path.is_file():
        return source
    if _HUB_ID.match(source) and not path.exists():
        return source
    raise StudioError(
        f"{source}: on a shared studio only bundled samples, your uploads, files under runs/pairs and Hub "
        "dataset ids can be read"
    )


def check_model_source(name: str) -> str:
    """A model named from the page: embedded, a Hub id, or (shared mode) a run; no server folder."""
    name = str(name or "").strip()
    if not shared_mode() or not name:
        return name
    if name in ("embedded", "embedded/tiny-llama"):
        return name
    path = Path(name).expanduser()
    if _inside(path, runs_root()) and path.exists():
        return name
    if _HUB_ID.match(name) and not path.exists():
        return name
    raise StudioError(f"{name}: on a shared studio models come from the Hub, the embedded model or the runs folder")


def check_remote_code(trust_remote_code, where: str = "form") -> None:
    """The page and the API never turn on remote code; only the app's owner can."""
    if trust_remote_code and not remote_code_allowed():
        raise StudioError(
            f"{where}: trust_remote_code can only be turned on by whoever started the app "
            "(python app.py --allow-remote-code, or STUDIO_ALLOW_REMOTE_CODE=1)"
        )


# ---- demo mode: a public Space where the owner decides who may train, export and push -----------
# STUDIO_DEMO=1            chat and evaluation for everyone; training, export and push only for the owners
# STUDIO_OWNERS=a,b        who counts as an owner (the Space's author, SPACE_AUTHOR_NAME, always does)
# STUDIO_DEMO_SIGNED_IN=1  also let any visitor signed in with Hugging Face train, export and push


def demo_mode() -> bool:
    return _flag("STUDIO_DEMO")


def owners() -> set[str]:
    names = {n.strip().lower() for n in os.environ.get("STUDIO_OWNERS", "").split(",") if n.strip()}
    if os.environ.get("SPACE_AUTHOR_NAME"):
        names.add(os.environ["SPACE_AUTHOR_NAME"].strip().lower())
    return names


def username(profile) -> str | None:
    """The signed-in visitor's Hugging Face name (a gr.OAuthProfile, a mapping or a plain name), or None."""
    if not profile:
        return None
    if isinstance(profile, str):
        return profile
    name = getattr(profile, "username", None) or (profile.get("preferred_username") if hasattr(profile, "get") else None)
    return str(name) if name else None


def can_work(profile) -> bool:
    """May this visitor train, export and push? Always outside demo mode."""
    if not demo_mode():
        return True
    name = username(profile)
    return bool(name) and (name.lower() in owners() or _flag("STUDIO_DEMO_SIGNED_IN"))


can_train = can_export = can_push = can_see_logs = can_work  # one rule today, one name per place that asks


def require_work(profile, action: str) -> None:
    if can_work(profile):
        return
    who = "signed-in visitors and the owner" if _flag("STUDIO_DEMO_SIGNED_IN") else "the owner of this demo"
    hint = " (sign in with Hugging Face first)" if not username(profile) else ""
    raise StudioError(f"{action} is open only to {who} here{hint}; chat and evaluation are open to everyone. "
                      "Duplicate the Space to do it on your own hardware")
