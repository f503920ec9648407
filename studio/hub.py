"""Pushing to the Hugging Face Hub, and the one place that picks the token for it.

Token order (the first one present wins):
  1. the visitor's own sign-in on a Space (`hf_oauth: true`, gr.LoginButton → gr.OAuthToken)
  2. a token typed in the Export tab: used for this one push, kept nowhere (not on disk, not in a log,
     not in an event, not in the page's state), never echoed back
  3. HF_TOKEN in the environment      } only for the owner: the command line, or the app run locally.
  4. the cached `hf auth login` token  } A shared page (share link, Space) never borrows them.
On a demo Space (STUDIO_DEMO=1) a push from the page takes the visitor's sign-in and nothing else.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from studio.errors import StudioError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    source: str  # said to the user instead of the token itself


def resolve_token(oauth_token=None, typed: str | None = None, *, from_page: bool = False) -> Token:
    from studio.access import demo_mode, shared_mode

    oauth = getattr(oauth_token, "token", oauth_token)
    if oauth:
        return Token(str(oauth), "your Hugging Face sign-in")
    if from_page and demo_mode():
        raise StudioError("on this demo Space you push with your own Hugging Face account: press "
                          "'Sign in with Hugging Face' first")
    typed = (typed or "").strip()
    if typed:
        if any(c.isspace() for c in typed):
            raise StudioError("the typed token has spaces in it: paste a Hugging Face access token (hf_…)")
        return Token(typed, "the token typed in this tab")
    if from_page and shared_mode():
        raise StudioError("this studio is shared: sign in with Hugging Face or type a write token for this push "
                          "(the owner's own token is not lent to visitors)")
    if os.environ.get("HF_TOKEN", "").strip():
        return Token(os.environ["HF_TOKEN"].strip(), "HF_TOKEN")
    from huggingface_hub import get_token

    cached = get_token()
    if cached:
        return Token(cached, "the cached `hf auth login` token")
    raise StudioError("no Hugging Face token: sign in, type a write token in the tab, set HF_TOKEN, "
                      "or run `hf auth login`")


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_repo_id(repo_id: str) -> str:
    repo_id = str(repo_id or "").strip()
    if not REPO_ID.match(repo_id) or ".." in repo_id:
        raise StudioError(f"repo id {repo_id!r}: write it as your-name/model-name (letters, digits, '-', '_', '.')")
    return repo_id


def _reachable(url: str) -> None:
    """Fail in seconds, not after the client's retries, when the Hub can't be reached."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise StudioError("can't push: offline mode is on (HF_HUB_OFFLINE=1); the export is kept, push again "
                          "when online")
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise StudioError(f"can't reach the Hub at {parts.hostname} ({e.__class__.__name__}); the export is kept, "
                          "push again when the network is back") from None


def _scrub(text: str, token: Token) -> str:
    return text.replace(token.value, "hf_***") if token.value else text


def _push_error(e: Exception, repo_id: str, token: Token) -> StudioError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, HfHubHTTPError) and status == 401:
        return StudioError(f"the Hub refused {token.source} (401): check the token is valid and has write access")
    if isinstance(e, HfHubHTTPError) and status in (403, 409):
        return StudioError(f"no rights to write {repo_id} with {token.source} ({status}): the repo may belong to "
                           "someone else, or the token is read-only")
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return StudioError(_scrub(f"push to {repo_id} failed: {first}; the export is kept, try again", token))


def push(parts: dict[str, Path], repo_id: str, token: Token, *, private: bool = False,
         message: str | None = None, progress=None) -> str:
    """Upload export parts to `repo_id` in one commit; returns the commit's URL.

    One part goes to the repo's root. Several: the merged model (or else the adapter) at the root with its
    card, the others in their own sub-folders (adapter/, gguf/), each with its card.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from studio.export import public_json

    repo_id = check_repo_id(repo_id)
    if not parts:
        raise StudioError("nothing to push: export the adapter, the merged model or GGUF first")
    for name, folder in parts.items():
        if not Path(folder).is_dir():
            raise StudioError(f"nothing to push for {name}: {Path(folder).name} is missing; export again")
    say = progress or (lambda msg: None)
    root = "merged" if "merged" in parts else "adapter" if "adapter" in parts else next(iter(parts))
    ops = []
    for name, folder in parts.items():
        prefix = "" if name == root else f"{name}/"
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                public = public_json(path)  # a local base path in adapter_config.json is not published
                ops.append(CommitOperationAdd(path_in_repo=prefix + path.relative_to(folder).as_posix(),
                                              path_or_fileobj=public if public is not None else str(path)))
    url = endpoint()
    _reachable(url)
    api = HfApi(endpoint=url, token=token.value)
    size = sum(op.upload_info.size for op in ops)
    try:
        say(f"creating {repo_id} ({'private' if private else 'public'}) with {token.source}")
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        say(f"uploading {len(ops)} files ({size / 2**20:.1f} MB) in one commit")
        info = api.create_commit(repo_id, ops, commit_message=message or f"Upload {', '.join(parts)} from LoRA Studio",
                                 repo_type="model")
    except StudioError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes one line without the token
        raise _push_error(e, repo_id, token) from None
    say(f"pushed: {info.commit_url}")
    return info.commit_url
