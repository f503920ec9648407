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

import hashlib
import json
import os
import re
import tempfile
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from studio import budgets
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
        raise StudioError(f"{shown_path(text)}: not a run in the runs folder")
    if path.resolve() == root.resolve():
        raise StudioError("that is the runs folder itself: pick one run in it")
    if must_exist and not path.is_dir():
        raise StudioError(f"{shown_path(text)}: no such run in the runs folder")
    require_read(path, f"run {path.name!r}")
    return path


def shown_path(text: str) -> str:
    """Text for the page (an error line, a job's log): on a shared studio never the server's absolute runs
    path, which becomes `runs`; locally the owner sees the real path."""
    root = str(runs_root().resolve())
    text = str(text)
    if shared_mode():
        text = text.replace(root, "runs").replace(str(runs_root()), "runs")
    return text


def in_runs(source: str) -> str:
    """`runs/…` as pages show it (see `shown_path`) → that path in the runs folder, wherever that folder is.
    Anything else, or a `runs/…` path that exists as given, is returned as it is."""
    text = str(source or "").strip()
    if text.startswith("runs/") and not Path(text).exists():
        return str(runs_root() / text[len("runs/"):])
    return text


def upload_dirs() -> list[Path]:
    """Where Gradio keeps this server's uploads (what a visitor sent is theirs to read back)."""
    base = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return [Path(base)]


def check_data_source(source: str) -> str:
    """A data source named from the page: in shared mode no arbitrary server path."""
    given = str(source or "").strip()
    source = in_runs(given)
    if not shared_mode() or not source:
        return source
    if source.startswith("sample:") or (_RUN_NAME.match(source) and ".." not in source
                                        and not Path(source).exists()):
        return source  # a bare name is a bundled sample's (or nothing): the data layer reads no path from it
    path = Path(source).expanduser()
    allowed = [*upload_dirs(), runs_root() / "pairs"]
    if any(_inside(path, folder) for folder in allowed) and path.is_file():
        require_read(path, f"{path.name}")
        return source
    if _HUB_ID.match(source) and not path.exists():
        return source
    raise StudioError(
        f"{given}: on a shared studio only bundled samples, your uploads, files under runs/pairs and Hub "
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


# ---- who owns what ------------------------------------------------------------------------------------
# The ownership model (README "Who owns what"). On a shared studio every event of the page and of the API
# runs for one *visitor*: the page's browser id (kept in the browser, sent on page load) and the event's
# session. Whatever a visitor makes is marked as theirs when it is made: an upload (when handed to the
# studio), a run (started), a labelling session and its pairs file, a built pairs file, a saved evaluation.
# - a visitor reads and writes only what is theirs, plus what the app's owner made (unmarked: runs, pairs
#   and results made from the command line or before the app was shared) read-only; an upload is only ever
#   its sender's. Results of a run go with the run.
# - the app's owner: everything from the command line and the disk; on a demo Space, a signed-in owner
#   (STUDIO_OWNERS / the Space's author) also reads every visitor's runs through the page.
# - locally (not shared) the one person at the keyboard owns everything: nothing is checked or marked.
# Marks are hashes of the visitor's keys, kept in <runs>/.owners.json (uploads: keyed by their path).


def _mark(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Visitor:
    keys: frozenset  # "client:<browser id>", "session:<gradio session>"
    username: str | None = None
    token: str | None = field(default=None, repr=False)  # their own Hugging Face sign-in, never the owner's

    def marks(self) -> list[str]:
        return sorted(_mark(k) for k in self.keys)

    @property
    def home(self) -> str:
        """The mark naming this visitor's own upload folder: their browser's, else their session's."""
        key = min(self.keys, key=lambda k: not k.startswith("client:"))
        return _mark(key)

    @property
    def is_app_owner(self) -> bool:
        return demo_mode() and bool(self.username) and self.username.lower() in owners()


_visitor: ContextVar[Visitor | None] = ContextVar("studio_visitor", default=None)
_visitor_source = None  # set by the UI: builds the Visitor of the event being handled (backend imports no gradio)
_clients: dict[str, str] = {}  # gradio session → the browser id its page sent on load


def set_visitor_source(fn) -> None:
    global _visitor_source
    _visitor_source = fn


def make_visitor(client_id: str | None = None, session: str | None = None, username: str | None = None,
                 token: str | None = None) -> Visitor | None:
    if session and client_id:
        _clients[session] = str(client_id)
    client_id = client_id or (_clients.get(session) if session else None)
    keys = {f"client:{client_id}"} if client_id else set()
    if session:
        keys.add(f"session:{session}")
    return Visitor(frozenset(keys), username, token or None) if keys or username else None


def current_visitor() -> Visitor | None:
    """Who the current event acts for; None outside the app (the command line, the owner's own scripts)."""
    v = _visitor.get()
    if v is None and _visitor_source is not None:
        v = _visitor_source()
    return v


class acting_for:
    """`with acting_for(visitor):` code below acts for that visitor (tests, and the job threads)."""

    def __init__(self, visitor: Visitor | None):
        self.visitor = visitor

    def __enter__(self):
        self._reset = _visitor.set(self.visitor)
        return self.visitor

    def __exit__(self, *exc):
        _visitor.reset(self._reset)


_owners_lock = threading.Lock()


def _owners_file() -> Path:
    return runs_root() / ".owners.json"


def _owner_key(path) -> str:
    p = Path(path).expanduser().resolve()
    try:
        return "runs:" + p.relative_to(runs_root().resolve()).as_posix()
    except ValueError:
        return str(p)


def _owners() -> dict:
    try:
        return json.loads(_owners_file().read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def owner_marks(path) -> list[str] | None:
    """The marks of whoever made `path` on a shared studio; None for the app owner's own things."""
    return _owners().get(_owner_key(path))


def claim(path, visitor: Visitor | None = None) -> None:
    """Mark `path` as made by the current visitor (shared studio only; refused if it is someone else's)."""
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return
    if owner_marks(path) is None:  # new: within this visitor's runs / pairs / results budget? (studio.budgets)
        budgets.check_new(Path(path), runs_root(), lambda p: bool(set(owner_marks(p) or ()) & set(visitor.marks())))
    with _owners_lock:
        table = _owners()
        key = _owner_key(path)
        marks = table.get(key)
        if marks and not set(marks) & set(visitor.marks()):
            raise StudioError(f"{Path(path).name} belongs to another visitor")
        table[key] = sorted(set(marks or []) | set(visitor.marks()))
        _owners_file().parent.mkdir(parents=True, exist_ok=True)
        tmp = _owners_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=0), encoding="utf-8")
        tmp.replace(_owners_file())


def _is_upload(path) -> bool:
    return any(_inside(Path(path), folder) for folder in upload_dirs())


def _upload_mark(path) -> str | None:
    """The visitor mark of an upload handed to the studio (uploads/visitor-<mark>/…), else None."""
    for folder in upload_dirs():
        try:
            first = Path(path).expanduser().resolve().relative_to(folder.resolve()).parts[0]
        except (ValueError, IndexError):
            continue
        return first.removeprefix("visitor-") if first.startswith("visitor-") else None
    return None


def may_read(path, visitor: Visitor | None = None) -> bool:
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return True
    if _is_upload(path):  # an upload is only its sender's
        return _upload_mark(path) in visitor.marks()
    marks = owner_marks(path)
    if marks is None:
        return True  # the owner's things are open to read
    return bool(set(marks) & set(visitor.marks()))


def may_write(path, visitor: Visitor | None = None) -> bool:
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return True
    marks = owner_marks(path)
    if marks is None:
        return not Path(path).exists()  # a new name is free; the owner's files are not for visitors to change
    return bool(set(marks) & set(visitor.marks()))


def require_read(path, what: str) -> None:
    if not may_read(path):
        raise StudioError(f"{what} belongs to another visitor: you can only open what you made here")


def require_write(path, what: str) -> None:
    if not may_write(path):
        raise StudioError(f"{what} belongs to someone else: you can only change what you made here; pick another "
                          "name")


def claim_upload(path) -> str:
    """A file a visitor handed to the studio through a file box: it becomes theirs, and only theirs to read.

    Gradio names an upload by its content's hash, shared by everyone who sends the same bytes; so the file is
    copied into the visitor's own folder (uploads/visitor-<mark>/…) and that path is what the studio uses."""
    import shutil

    visitor = current_visitor()
    if not path or not shared_mode() or visitor is None or not _is_upload(path):
        return path
    src = Path(path).expanduser().resolve()
    if _upload_mark(src) is not None:
        require_read(src, src.name)
        os.utime(src)  # used now: kept for the upload TTL from here (studio.budgets)
        return str(src)
    dest = upload_dirs()[0] / f"visitor-{visitor.home}" / src.parent.name / src.name
    if not dest.exists():
        budgets.check_upload(dest.parents[1], src)  # this visitor's uploads: count and bytes (studio.budgets)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    os.utime(dest)  # used now: kept for the upload TTL from here
    return str(dest)


def hub_token():
    """The token for a Hub read made now: on a shared studio the visitor's own sign-in or none at all (False:
    huggingface_hub would otherwise read the owner's HF_TOKEN or cached login by itself); locally the owner's."""
    if shared_mode():
        visitor = current_visitor()
        return (visitor.token if visitor and visitor.token else False)
    return os.environ.get("HF_TOKEN") or None


def keep_owner_token_out() -> None:
    """A shared app's process holds no owner token for libraries to find on their own (lm-eval's and
    datasets' downloads, anything that asks huggingface_hub for "the" token): HF_TOKEN leaves the
    environment and implicit tokens are off. Reads pass hub_token() explicitly as well."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(name, None)
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True
