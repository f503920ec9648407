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
import os
import re
import tempfile
import threading
from collections import OrderedDict
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


# ---- the closed surface: one door from a visitor's handle to a path ---------------------------------------
# On a shared studio a visitor names things only by handles the server handed them (docs/security.md "Closed
# surface"); `resolve(kind, handle)` is the one place that turns such a handle into a path (or a Hub id),
# after deciding who may have it. Locally (not shared) the owner's paths keep working as they always did.
#   run      a run's name (its folder in the runs folder): the visitor's own, or the owner's (unmarked)
#   adapter  a run's name → its final adapter folder (never runs/<run>/adapter or a checkpoint folder)
#   model    the embedded model, a Hub id (owner/name), or a run's name
#   data     a bundled sample, a pairs file (runs/pairs/NAME.jsonl as pages show it), the visitor's own
#            upload (the path Gradio handed them, copied into their own upload folder), or a Hub dataset id
#   pairs    a pairs file's name (NAME, NAME.jsonl or runs/pairs/NAME.jsonl)
#   upload   a file this visitor uploaded
#   task     an lm-eval task: the studio's bundled task or a name in lm-eval's own task index, never a path
#   hub      a Hub id, owner/name: no URL, no path, nothing that exists on the server's disk
#   recipe   a bundled recipe's name (recipes/NAME.yaml), in every mode: the page lists only those

_PAIRS_HANDLE = re.compile(r"^(?:runs/pairs/)?([A-Za-z0-9][A-Za-z0-9._-]{0,99}?)(?:\.jsonl)?$")
_RUN_ALIAS = re.compile(r"^runs/([A-Za-z0-9][A-Za-z0-9._-]{0,99})$")  # `runs/<run>` as docs and recipes write it
_TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
BUNDLED_MODELS = ("embedded", "embedded/tiny-llama")
BUNDLED_TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "lm_eval"


BUNDLED_RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _resolve_recipe(text: str) -> Path:
    """A bundled recipe's name (what the page's recipe lists offer) → its file; never a path."""
    path = BUNDLED_RECIPES_DIR / f"{text}.yaml"
    if not (_RUN_NAME.match(text) and ".." not in text and path.is_file()):
        raise StudioError(f"{_echo(text)}: no such recipe; pick one from the list "
                          f"({', '.join(sorted(p.stem for p in BUNDLED_RECIPES_DIR.glob('*.yaml'))[:6])}, …)")
    return path


def bundled_tasks() -> dict[str, Path]:
    """The studio's own lm-eval tasks (assets/lm_eval/*.yaml) by name."""
    return {p.stem: p for p in sorted(BUNDLED_TASKS_DIR.glob("*.yaml"))}


_task_index: frozenset | None = None
_task_index_lock = threading.Lock()


def lm_eval_task_index() -> frozenset:
    """Every task, group and tag name lm-eval ships (its own index: ~15k names, read once per process)."""
    global _task_index
    with _task_index_lock:
        if _task_index is None:
            from lm_eval.tasks import TaskManager

            _task_index = frozenset(TaskManager().all_tasks)
        return _task_index


def _echo(handle: str) -> str:
    """A refused handle as an error line shows it: a path is not echoed (it may name a server folder or another
    visitor's run), a long one neither."""
    return repr(handle) if len(handle) <= 80 and not any(c in handle for c in "/\\~") else "that path"


def _refuse(kind: str, handle: str, what: str) -> StudioError:
    """One line saying what was refused (see `_echo`)."""
    shown = _echo(handle)
    article = "an" if kind[0] in "aeiou" or kind.startswith("lm-") else "a"
    return StudioError(f"{shown}: on a shared studio {article} {kind} is {what}")


def _run_name(text: str) -> str | None:
    """The run name a handle names (NAME, or runs/NAME), or None."""
    alias = _RUN_ALIAS.match(text)
    name = alias.group(1) if alias else text
    return name if _RUN_NAME.match(name) and ".." not in name else None


def _resolve_run(text: str, runs_dir=None, must_exist: bool = True) -> Path:
    root = runs_root(runs_dir)
    if not text:
        raise StudioError("no run given: pick a run from the runs folder")
    path = Path(text).expanduser()
    if shared_mode():
        name = _run_name(text)
        if name is None:
            raise _refuse("run", text, "named by its name from your run list (no paths, no folders inside a run)")
        path = root / name
    elif len(path.parts) == 1:
        path = root / check_run_name(text)
    elif not _inside(path, root) and not path.is_dir():
        raise StudioError(f"{shown_path(text)}: not a run in the runs folder")
    if path.resolve() == root.resolve():
        raise StudioError("that is the runs folder itself: pick one run in it")
    if must_exist and not path.is_dir():
        raise StudioError(f"{shown_path(text)}: no such run in the runs folder")
    require_read(path, f"run {path.name!r}")
    return path


def _resolve_adapter(text: str) -> Path:
    run = _resolve_run(text)
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise StudioError(f"{run.name}: this run has no adapter (it has not finished training)")
    return adapter


def _resolve_hub(text: str, what: str = "Hub id") -> str:
    if not shared_mode():
        return text
    first = text.split("/", 1)[0]
    if (not _HUB_ID.match(text) or ".." in text or "://" in text or Path(text).expanduser().exists()
            or first in ("runs", runs_root().name, "embedded")):
        raise _refuse(what, text, "a Hub id: owner/name (no URL, no path)")
    return text


def _resolve_model(text: str) -> str:
    if not shared_mode() or not text:
        return text
    if text in BUNDLED_MODELS:
        return text
    if _RUN_NAME.match(text) and ".." not in text and (runs_root() / text).is_dir():
        _resolve_run(text)
        return text
    if _HUB_ID.match(text):
        return _resolve_hub(text, "model")
    raise _refuse("model", text, "a Hub id (owner/name), the embedded model or one of your runs by its name "
                                 "(never a folder or a path inside a run)")


def _resolve_pairs(text: str, must_exist: bool = True) -> Path:
    match = _PAIRS_HANDLE.match(text)
    if not match or ".." in text:
        raise _refuse("pairs file", text, "named by its name (runs/pairs/NAME.jsonl as the page shows it)")
    path = runs_root() / "pairs" / f"{match.group(1)}.jsonl"
    if must_exist and not path.is_file():
        raise StudioError(f"runs/pairs/{path.name}: no such pairs file")
    require_read(path, path.name)
    return path


def _resolve_upload(text: str) -> str:
    path = Path(text).expanduser()
    if not shared_mode():
        return text
    if not (_is_upload(path) and path.is_file()):
        raise _refuse("file", text, "one you uploaded here")
    require_read(path, path.name)
    return text


_UPLOAD_HANDLE = re.compile(r"^upload:\s*(.+?)\s*$")


def find_upload(name: str) -> Path:
    """`upload: NAME`, the handle the Data tab shows for a file the visitor uploaded → that file: on a shared
    studio the visitor's own copy (the newest of that name), locally the newest upload of that name Gradio holds.
    The same handle works in every field that reads data (Train, DPO pairs, Evaluate, chat stories)."""
    name = str(name or "").strip()
    if not name or any(c in name for c in "/\\*?[]") or name in (".", ".."):
        raise StudioError(f"upload: {_echo(name)}: name an upload by its file name, as the Data tab shows it")
    if shared_mode():
        visitor = current_visitor()
        homes = set(visitor.marks()) if visitor is not None else set()
        found = [p for p in private_uploads().glob(f"*/*/*/{name}") if p.parent.parent.name in homes]
    else:
        found = [p for folder in upload_dirs() for p in folder.glob(f"*/{name}")]
    found = [p for p in found if p.is_file()]
    if not found:
        raise StudioError(f"upload: {_echo(name)}: no upload of yours by that name here (upload it on the Data tab; "
                          "an upload leaves some hours after its last use)")
    return max(found, key=lambda p: p.stat().st_mtime)


def _resolve_data(text: str) -> str:
    handle = _UPLOAD_HANDLE.match(text)
    if handle:
        path = find_upload(handle.group(1))
        return _resolve_upload(str(path)) if shared_mode() else str(path)
    given, text = text, in_runs(text)
    if not shared_mode() or not text:
        return text
    if given.startswith("sample:") or (_RUN_NAME.match(given) and ".." not in given and not Path(given).exists()):
        return given  # a bundled sample's name (or nothing): the data layer reads no path from it
    if given.startswith("runs/pairs/"):
        return str(_resolve_pairs(given))
    path = Path(given).expanduser()
    if path.is_absolute() and _is_upload(path):
        return _resolve_upload(given)
    if _HUB_ID.match(given) and not given.startswith("runs/"):
        return _resolve_hub(given, "data source")
    raise StudioError(
        f"{_echo(given)}: on a shared studio only bundled samples, your uploads, pairs files (runs/pairs/NAME.jsonl) "
        "and Hub dataset ids (owner/name) can be read"
    )


def _resolve_task(text: str) -> str:
    if text in bundled_tasks() or not shared_mode():
        return text
    if not _TASK_NAME.match(text) or text not in lm_eval_task_index():
        raise _refuse("lm-eval task", text, f"a name from lm-eval's task list or the studio's own "
                                            f"({', '.join(bundled_tasks())}); never a file")
    return text


def resolve(kind: str, handle, *, must_exist: bool = True, runs_dir=None):
    """The one door: a visitor's handle of `kind` (see above) → a path or id, or one line saying why not.

    run/adapter/pairs/recipe give a Path; model/data/upload/task/hub give the text to load (a Hub id, a bundled name,
    the visitor's own upload, or for data a pairs file's real path). Locally every path is the owner's."""
    text = str(handle or "").strip()
    if kind == "run":
        return _resolve_run(text, runs_dir, must_exist)
    if kind == "adapter":
        return _resolve_adapter(text)
    if kind == "pairs":
        return _resolve_pairs(text, must_exist)
    if kind == "recipe":
        return _resolve_recipe(text)
    resolvers = {"model": _resolve_model, "data": _resolve_data, "upload": _resolve_upload, "task": _resolve_task,
                 "hub": _resolve_hub}
    if kind not in resolvers:
        raise ValueError(f"unknown handle kind {kind!r}")
    return resolvers[kind](text)


def resolve_run(ref: str | os.PathLike, runs_dir=None, must_exist: bool = True) -> Path:
    """A run named by a visitor (its name; locally also a path to it) → its folder: `resolve("run", …)`."""
    return resolve("run", ref, runs_dir=runs_dir, must_exist=must_exist)


def shown_path(text: str) -> str:
    """Text for the page (an error line, a job's log): on a shared studio never the server's absolute runs
    path, which becomes `runs`; locally the owner sees the real path."""
    root = str(runs_root().resolve())
    text = str(text)
    if shared_mode():
        text = text.replace(root, "runs").replace(str(runs_root()), "runs")
        text = _VISITOR_PATH.sub("your folder/", text)  # a visitor's mark is nobody's business either
        text = _PRIVATE_UPLOAD.sub("your uploads/", text.replace(str(private_uploads().resolve()), "runs/.uploads"))
        for folder in upload_dirs():  # a raw upload's folder is its bytes' hash: nobody's business either
            text = re.sub(re.escape(str(folder.resolve())) + r"/[0-9a-f]{16,}/", "", text)
        cwd = os.getcwd()
        if len(cwd) > 1:  # the server's working folder (the checkout) is nobody's business either
            text = text.replace(cwd + os.sep, "")
    return text


VISITORS_DIR = ".visitors"  # <runs>/.visitors/<mark>/: what a visitor writes that goes with no run of theirs


def visitor_folder(visitor: "Visitor | None" = None) -> Path | None:
    """The current visitor's own folder on a shared studio (their saved results live there, never in the
    owner's run); None locally, outside the app and for the app's owner."""
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return None
    return runs_root() / VISITORS_DIR / visitor.home


_VISITOR_PATH = re.compile(r"runs/\.visitors/[0-9a-f]+/")
_PRIVATE_UPLOAD = re.compile(r"runs/\.uploads/[0-9a-f]+/[0-9a-f]+/[0-9a-f]+/")


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
    """A data source named from the page: `resolve("data", …)`."""
    return resolve("data", source)


def check_model_source(name: str) -> str:
    """A model named from the page: `resolve("model", …)`."""
    return resolve("model", name)


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
# Marks are hashes of the visitor's keys, kept in <runs>/.owners.sqlite (studio.ownership; uploads: keyed by path).
# A browser's key is the id the server issued it and verified (studio.ownership), an API client's its session.


def _mark(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Visitor:
    keys: frozenset  # "client:<browser id>", "session:<gradio session>"
    username: str | None = None  # a signed-in name: Hugging Face (a Space's OAuth) or an account of the app's
    token: str | None = field(default=None, repr=False)  # their own Hugging Face sign-in, never the owner's
    address: str | None = None  # the visitor's address, only where it can be trusted (see `trusted_address`)

    def marks(self) -> list[str]:
        return sorted(_mark(k) for k in self.keys)

    @property
    def home(self) -> str:
        """The mark naming this visitor's own upload folder: their browser's, else their session's."""
        key = min(self.keys, key=lambda k: not k.startswith("client:"))
        return _mark(key)

    @property
    def is_app_owner(self) -> bool:
        """Signed in as one of the app's owners (STUDIO_OWNERS, a Space's author): with an account or OAuth."""
        return bool(self.username) and self.username.lower() in owners()

    @property
    def payer(self) -> str:
        """Who pays for what this visitor does: the key of every budget (docs/budgets.md "Who a visitor is").

        Sessions and browser ids are free to mint, so they name no one who pays: a signed-in visitor pays as
        their account (`user:<name>`), an anonymous one, where the app trusts a proxy's word for addresses, as
        that address (`address:<ip>`), and otherwise every anonymous visitor pays from ONE pool, `anonymous`.
        The app's owner is `owner` (exempt)."""
        if self.is_app_owner:
            return "owner"
        if self.username:
            return f"user:{self.username.lower()}"
        if self.address:
            return f"address:{self.address}"
        return "anonymous"


_visitor: ContextVar[Visitor | None] = ContextVar("studio_visitor", default=None)
_visitor_source = None  # set by the UI: builds the Visitor of the event being handled (backend imports no gradio)
_clients: "OrderedDict[str, str]" = OrderedDict()  # gradio session → the verified browser id its page sent
_clients_lock = threading.Lock()


def max_visitors() -> int:
    """How many sessions the visitor table remembers (the least recently seen go first)."""
    try:
        return max(1, int(os.environ.get("STUDIO_MAX_VISITORS", "10000")))
    except ValueError:
        return 10000


def set_visitor_source(fn) -> None:
    global _visitor_source
    _visitor_source = fn


def make_visitor(client_id: str | None = None, session: str | None = None, username: str | None = None,
                 token: str | None = None, address: str | None = None) -> Visitor | None:
    """The visitor of one event. `client_id` is a browser id the server issued and has verified
    (`studio.ownership.verify_browser_id`), never a string as a client sent it; `session` is Gradio's."""
    with _clients_lock:
        if session and client_id:
            _clients[session] = str(client_id)
        if session and session in _clients:
            _clients.move_to_end(session)
            client_id = client_id or _clients[session]
        while len(_clients) > max_visitors():
            _clients.popitem(last=False)
    keys = {f"client:{client_id}"} if client_id else set()
    if session:
        keys.add(f"session:{session}")
    return Visitor(frozenset(keys), username, token or None, address or None) if keys or username else None


def trusted_proxies() -> str:
    """STUDIO_TRUSTED_PROXIES: the proxies (addresses or networks, comma-separated) whose X-Forwarded-For the
    app believes. Empty (the default): no header from anyone is believed; every anonymous visitor is one pool."""
    return os.environ.get("STUDIO_TRUSTED_PROXIES", "").strip()


def trusted_address(peer: str | None) -> str | None:
    """The visitor's address as far as it can be trusted: only with STUDIO_TRUSTED_PROXIES set (the server's
    uvicorn then rewrites the peer from the header of those proxies alone: app.py sets FORWARDED_ALLOW_IPS);
    without it, None: on a share link or behind an unnamed proxy every visitor has the same peer address."""
    return peer if peer and trusted_proxies() else None


def payer_of(username: str | None = None, address: str | None = None) -> str:
    """`Visitor.payer` for what a request says before any visitor is known (the queue's join)."""
    return Visitor(frozenset(), username, None, trusted_address(address)).payer


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


def _owner_key(path) -> str:
    p = Path(path).expanduser().resolve()
    try:
        return "runs:" + p.relative_to(runs_root().resolve()).as_posix()
    except ValueError:
        return str(p)


def owner_marks(path) -> list[str] | None:
    """The marks of whoever made `path` on a shared studio; None for the app owner's own things."""
    from studio.ownership import get_marks

    return get_marks(_owner_key(path), runs_root())


def claim(path, visitor: Visitor | None = None) -> None:
    """Mark `path` as made by the current visitor (shared studio only; refused if it is someone else's)."""
    from studio.ownership import add_marks

    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return
    if owner_marks(path) is None:  # new: within its payer's runs / pairs / results budget? (studio.budgets)
        budgets.check_new(Path(path), runs_root(), lambda p: paid_by(p, visitor))
    mine = set(visitor.marks())
    try:
        add_marks(_owner_key(path), mine, lambda existing: bool(set(existing) & mine), runs_root())
    except PermissionError:
        raise StudioError(f"{Path(path).name} belongs to another visitor") from None
    add_marks(_PAYER + _owner_key(path), {_mark(visitor.payer)}, lambda existing: True, runs_root())


_PAYER = "payer:"  # the ownership store's key prefix for who pays for a thing (not who may read it)


def paid_by(path, visitor: Visitor) -> bool:
    """Does `path` count against `visitor`'s payer's budget? Who may READ a thing is its marks (the browser or
    session that made it); who PAYS is the payer recorded when it was claimed (`Visitor.payer`): every
    anonymous session pays from one pool, so minting sessions buys no second budget. A thing claimed before
    payers were recorded counts for the visitor who made it."""
    from studio.ownership import get_marks

    key = _owner_key(path)
    payer = get_marks(_PAYER + key, runs_root())
    if payer is not None:
        return _mark(visitor.payer) in payer
    return bool(set(get_marks(key, runs_root()) or ()) & set(visitor.marks()))


UPLOADS_DIR = ".uploads"  # <runs>/.uploads/<payer>/<home>/<upload>/<name>: visitors' own copies of their uploads


def private_uploads() -> Path:
    """Where a shared studio keeps visitors' copies of their uploads: in the runs folder, which no server route
    serves (Gradio serves every file under its temp folder to whoever names the path: docs/security.md)."""
    return runs_root() / UPLOADS_DIR


def _is_raw_upload(path) -> bool:
    """A file as Gradio's upload route left it (transport only: nobody's until handed to the studio)."""
    return any(_inside(Path(path), folder) for folder in upload_dirs())


def _is_private_upload(path) -> bool:
    return _inside(Path(path), private_uploads())


def _is_upload(path) -> bool:
    return _is_raw_upload(path) or _is_private_upload(path)


def _upload_mark(path) -> str | None:
    """The visitor mark (the `home`) of an upload handed to the studio (.uploads/<payer>/<home>/…), else None."""
    try:
        parts = Path(path).expanduser().resolve().relative_to(private_uploads().resolve()).parts
    except ValueError:
        return None
    return parts[1] if len(parts) > 2 else None


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


def may_see(path, visitor: Visitor | None = None) -> bool:
    """`may_read` for a path that may lie deep inside the runs folder (a run's adapter, a story index in a run):
    what decides is the run (or pairs file, or visitor folder) it belongs to — marks are kept for those, never for
    the files inside them. What a page lists (a cache panel) passes here."""
    p = Path(path).expanduser()
    try:
        rel = p.resolve().relative_to(runs_root().resolve()).parts
    except ValueError:
        return may_read(p, visitor)
    if rel and rel[0] == UPLOADS_DIR:
        return may_read(p, visitor)
    top = runs_root() / rel[0] if rel and rel[0] not in ("pairs", "evals") else p
    if rel and rel[0] == "pairs" and len(rel) > 1:
        top = runs_root() / "pairs" / rel[1]
    return may_read(top, visitor)


def may_write(path, visitor: Visitor | None = None) -> bool:
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return True
    marks = owner_marks(path)
    if marks is None:
        return not Path(path).exists()  # a new name is free; the owner's files are not for visitors to change
    return bool(set(marks) & set(visitor.marks()))


def may_write_each(paths, visitor: Visitor | None = None) -> list[bool]:
    """`may_write` for each of many paths, with one look-up in the ownership store: a page load that looks
    for the visitor's own labelling session among thousands stays fast (issue 25, finding 6)."""
    from studio.ownership import shares_marks

    paths = [Path(p) for p in paths]
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return [True] * len(paths)
    root, prefixes = runs_root().resolve(), {}

    def prefix(parent: Path) -> str:  # _owner_key's folder part, worked out once per folder
        folder = parent.expanduser().resolve()
        try:
            return "runs:" + (folder / "x").relative_to(root).as_posix()[:-1]
        except ValueError:
            return str(folder / "x")[:-1]

    def key(path: Path) -> str:  # _owner_key (the files are the studio's own listing: no link to follow)
        parent = path.parent
        return (prefixes.get(parent) or prefixes.setdefault(parent, prefix(parent))) + path.name

    keys = [key(p) for p in paths]
    table = shares_marks(set(keys), visitor.marks(), runs_root())
    return [table[k] if k in table else not p.exists() for k, p in zip(keys, paths)]


def may_watch(path, visitor: Visitor | None = None) -> bool:
    """May this visitor see a job's live view (its run name, progress, chart, log, samples, error, held-out
    rows)? Locally yes: every browser is the one person at the keyboard. On a shared studio only the visitor
    who started the job (the run's marks), or a demo's signed-in owner; others learn only that the slot is busy.
    Unlike `may_read`, the app owner's own unmarked runs are not every visitor's to watch."""
    visitor = visitor or current_visitor()
    if not shared_mode() or visitor is None or visitor.is_app_owner:
        return True
    marks = owner_marks(path)
    return bool(marks) and bool(set(marks) & set(visitor.marks()))


def require_read(path, what: str) -> None:
    if not may_read(path):
        raise StudioError(f"{what} belongs to another visitor: you can only open what you made here")


def require_write(path, what: str) -> None:
    if not may_write(path):
        raise StudioError(f"{what} belongs to someone else: you can only change what you made here; pick another "
                          "name")


def claim_upload(path) -> str:
    """A file a visitor handed to the studio through a file box: it becomes theirs, and only theirs to read.

    Gradio's upload route takes files from anyone, names them by their bytes and serves everything in its temp
    folder to whoever names the path. So on a shared studio a raw upload is transport only: at hand-over it is
    copied into the visitor's own folder in the runs folder (served by no route), counted against their payer's
    upload budget, and removed from Gradio's folder. Each visitor gets their own copy: nothing to squat on, and
    nothing learned about what others sent (two visitors sending the same bytes each get theirs)."""
    import shutil

    visitor = current_visitor()
    if not path or not shared_mode() or visitor is None:
        return path
    src = Path(path).expanduser()
    if _is_private_upload(src):  # handed over before: the visitor's own copy (anyone else's is refused)
        require_read(src, src.name)
        if src.is_file():
            os.utime(src)  # used now: kept for the upload TTL from here (studio.budgets)
        return str(src.resolve())
    if not _is_raw_upload(src):
        return path  # not an upload: the resolver decides what it is
    payer_dir = private_uploads() / _mark(visitor.payer)
    dest = payer_dir / visitor.home / src.parent.name / src.name
    if not dest.is_file():
        if not src.is_file():
            raise StudioError(f"{_echo(src.name)}: that upload is no longer here (each upload is taken once and "
                              "unclaimed ones leave after a few minutes): upload the file again")
        if visitor.payer != "owner":
            budgets.check_upload(payer_dir, src, private_uploads())  # the payer's uploads, and everyone's kept
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(src, part)
        os.replace(part, dest)
    _discard_raw(src)
    os.utime(dest)  # used now: kept for the upload TTL from here
    return str(dest.resolve())


def _discard_raw(src: Path) -> None:
    """Gradio's copy of a handed-over upload leaves its served folder at once (and its folder if now empty)."""
    try:
        src.unlink()
        src.parent.rmdir()
    except OSError:
        pass


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
