"""One stranger, many identities (issue 31): a stranger mints fresh Gradio sessions (one `gradio_client.Client`
each), made-up browser ids and forged `X-Forwarded-For` headers, and together they must get no more than one
visitor's budget: the training slot plus ONE waiting place, one visitor's uploads, one visitor's runs.

On a shared app every budget is keyed by who pays (`studio.access.Visitor.payer`): an account of the app's
(`--auth` / STUDIO_AUTH) pays as itself, every anonymous visitor pays from one pool, and neither a session, a
browser id nor a header buys a second budget. So the same stranger is tried twice: anonymous on a `--shared`
app, and signed in as one account (many sessions of it) on a `--shared` app with accounts, where another account
and the owner's account must still get into the line.

Fast on purpose: the tiny-quotes recipe, budgets of 2, a job cap of 3 minutes, every job stopped at the end."""

import contextlib
import re
import uuid

import pytest

from app_server import start_app, wait_for
from test_app_api import _form

N = 8  # identities one stranger mints
BUDGET = {"STUDIO_VISITOR_UPLOADS": "2", "STUDIO_VISITOR_RUNS": "2", "STUDIO_MAX_WAITING": "6",
          "STUDIO_MAX_JOB_MINUTES": "3", "STUDIO_JOB_MEMORY_GB": "8", "OMP_NUM_THREADS": "1"}
ACCOUNTS = {"eve": "pw-eve", "bob": "pw-bob", "olive": "pw-olive"}  # eve: the stranger; olive: the app's owner


def _app(tmp_path_factory, name: str, **env):
    tmp = tmp_path_factory.mktemp(name)
    (tmp / "runs").mkdir()
    (tmp / "uploads").mkdir()  # Gradio's temp folder, this app's alone
    proc, url = start_app(tmp / "runs", extra_args=["--shared"], timeout=300, env={
        "GRADIO_TEMP_DIR": str(tmp / "uploads"), **BUDGET, **env})
    proc.tmp, proc.url, proc.runs = tmp, url, tmp / "runs"
    return proc


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory):
    """A --shared app with no accounts: every visitor is anonymous."""
    app = _app(tmp_path_factory, "sybil-anon")
    yield app
    app.terminate()
    app.wait(10)


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    """A --shared app with accounts (Gradio's sign-in): eve, bob and the owner olive (STUDIO_OWNERS)."""
    app = _app(tmp_path_factory, "sybil-auth", STUDIO_AUTH=",".join(f"{n}:{p}" for n, p in ACCOUNTS.items()),
               STUDIO_OWNERS="olive")
    yield app
    app.terminate()
    app.wait(10)


class Identity:
    """One identity the stranger minted: its own Gradio session (a fresh Client), a forged X-Forwarded-For and a
    made-up browser id shaped like a signed one (32 hex, a dot, 64 hex)."""

    def __init__(self, url: str, i: int, account: str | None = None):
        from gradio_client import Client

        self.i = i
        self.client_id = f"{uuid.uuid4().hex}.{uuid.uuid4().hex}{uuid.uuid4().hex}"
        self.client = Client(url, verbose=False, headers={"X-Forwarded-For": f"203.0.113.{10 + i}"},
                             auth=(account, ACCOUNTS[account]) if account else None,
                             httpx_kwargs={"timeout": 180})
        self.client.predict("tiny-quotes", api_name="/fill")  # as a page does on load: the session keeps the recipe

    def predict(self, *args, api_name: str):
        return self.client.predict(*args, api_name=api_name)

    def start(self, **form) -> str:
        _, values = _form(**form)
        return str(self.predict(self.client_id, *values, api_name="/start_training"))

    def upload(self, path) -> str:
        from gradio_client import handle_file

        status, _info, _ = self.predict("Upload", "quotes", handle_file(str(path)), "", "", "", "", "auto", "", "",
                                        api_name="/inspect_data")
        return str(status)


def _mint(app, account: str | None = None) -> list[Identity]:
    return [Identity(app.url, i, account) for i in range(N)]


LONG = dict(max_steps=10_000_000, save_steps=10_000_000, eval_steps=10_000_000, logging_steps=5)
SHORT = dict(max_steps=2, save_steps=1000, eval_steps=1000, logging_steps=1)


def _run_folders(runs) -> set[str]:
    return {p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "pairs"}


def _uploads(app, tmp_path, who: list[Identity], tag: str) -> list[tuple[int, str]]:
    """Each identity hands over a file of its own (different bytes, different name): the answers."""
    answers = []
    for ident in who:
        path = tmp_path / f"{tag}-{ident.i}.jsonl"
        path.write_text("".join(f'{{"quote": "{tag} {ident.i} row {j}", "author": "x"}}\n' for j in range(12)))
        answers.append((ident.i, ident.upload(path)))
    return answers


def _assert_one_upload_budget(answers, budget: int):
    loaded = [i for i, status in answers if "Loaded" in status]
    refused = [status for _i, status in answers if "Loaded" not in status]
    assert len(loaded) <= budget, (f"{len(loaded)} of {N} identities each had an upload handed over (one visitor's "
                                   f"budget is {budget}): {answers}")
    assert loaded, answers  # the first identity is an honest visitor: its upload is taken
    assert all("STUDIO_VISITOR_UPLOADS" in s for s in refused), refused


@contextlib.contextmanager
def _line(app, who: list[Identity]):
    """The first identity starts a long job; every other one tries to join the line. Yields (the long job's
    answer, [(identity, answer)]); after the block everyone leaves the line and every job is stopped."""
    first = who[0]
    started = first.start(**LONG)
    try:
        assert "Started" in started, started
        wait_for(lambda: "running" in str(first.predict(first.client_id, api_name="/poll")[0]), 240,
                 "the long job to run")
        yield started, [(ident, ident.start(**SHORT)) for ident in who[1:]]
    finally:
        _stop_everything(app, who)


def _stop_everything(app, who):
    for ident in who:
        with contextlib.suppress(Exception):
            ident.predict(ident.client_id, api_name="/leave_queue")
    for ident in who:
        with contextlib.suppress(Exception):
            ident.predict(ident.client_id, api_name="/stop_training")
    wait_for(lambda: not any("running" in str(i.predict(i.client_id, api_name="/poll")[0]) for i in who[:1]), 120,
             "the slot to be free")


def _waiting(answers) -> list:
    return [(ident.i, a) for ident, a in answers if "Waiting in line" in a or "Started" in a]


# ---- anonymous: sessions, browser ids and headers buy nothing ----------------------------------------------------
def test_n_anonymous_identities_hand_over_no_more_than_one_visitors_uploads(anonymous, tmp_path):
    _assert_one_upload_budget(_uploads(anonymous, tmp_path, _mint(anonymous), "anon"), 2)


def test_n_anonymous_identities_hold_the_slot_and_one_waiting_place(anonymous):
    who = _mint(anonymous)
    with _line(anonymous, who) as (_started, answers):
        waiting = _waiting(answers)
        assert len(waiting) <= 1, (f"{len(waiting)} of the stranger's {N - 1} other identities got a place in line "
                                   f"beside its running job: {waiting}")
        assert waiting, answers  # one place in line is one visitor's: the stranger has it
        refused = [a for _i, a in answers if "Waiting in line" not in a]
        assert all("studio-error" in a and "\n" not in re.sub(r"<[^>]+>", "", a).strip() for a in refused), refused


def test_n_anonymous_identities_get_one_running_and_one_waiting_heavy_call(anonymous):
    """Heavy work (studio.work: an evaluation here) has one waiting place per payer: N identities asking at once
    get at most the running call and one waiting; the others are refused with one line naming the variable."""
    who = _mint(anonymous)
    # the bundled instruction suite (12 rows) × 96 new tokens of the embedded model: seconds each, so the calls overlap
    jobs = [ident.client.submit([], "embedded/tiny-llama", "instruction", "", 12, 96, f"sybil-{ident.i}", None,
                                "row order", api_name="/evaluate") for ident in who]
    answers = []
    for ident, job in zip(who, jobs):
        try:
            answers.append((ident.i, str(job.result(timeout=600))))
        except Exception as e:  # noqa: BLE001 - a Gradio error event is an answer too
            answers.append((ident.i, f"error: {e}"))
    done = [(i, a[:200]) for i, a in answers if "Saved " in a]
    refused = [a for _i, a in answers if "Saved " not in a]
    assert len(done) <= 2, (f"{len(done)} of the stranger's {N} identities each had an evaluation run (one visitor: "
                            f"one running and one waiting): {done}")
    assert all("STUDIO_HEAVY_WAITING_PER_PAYER" in a for a in refused), [a[:300] for a in refused]


def test_n_anonymous_identities_start_no_more_runs_than_one_visitors_budget(anonymous):
    """STUDIO_VISITOR_RUNS=2: the long job above is one run of the anonymous pool; each identity in turn starts a
    2-step job and waits for it: at most one more run folder appears, whichever identity asks."""
    runs = anonymous.runs
    who = _mint(anonymous)
    made = []
    try:
        for ident in who:
            answer = ident.start(**SHORT)
            if "Started" in answer:
                made.append(ident.i)
                name = re.search(r"Started ([\w.-]*[\w-])", answer).group(1)
                wait_for(lambda: (runs / name / "summary.json").exists(), 240, f"run {name} to finish")
            folders = _run_folders(runs)
            assert len(folders) <= 2, (f"the anonymous pool now has {len(folders)} runs (budget 2: "
                                       f"STUDIO_VISITOR_RUNS); identities {made} each started one: {sorted(folders)}")
            if "Started" not in answer:
                assert "STUDIO_VISITOR_RUNS" in answer, answer
    finally:
        _stop_everything(anonymous, who)


# ---- one account, many sessions: the account is the budget; others still get in -----------------------------
def test_one_accounts_many_sessions_get_one_visitors_budget_and_others_still_get_in_line(accounts, tmp_path):
    who = _mint(accounts, "eve")
    _assert_one_upload_budget(_uploads(accounts, tmp_path, who, "eve"), 2)
    bob, olive = Identity(accounts.url, 90, "bob"), Identity(accounts.url, 91, "olive")
    with _line(accounts, who) as (_started, answers):
        waiting = _waiting(answers)
        assert len(waiting) <= 1, (f"{len(waiting)} of eve's {N - 1} other sessions got a place in line beside "
                                   f"her running job: {waiting}")
        assert waiting, answers
        joined = bob.start(**SHORT)  # another account: a budget of its own, a place in line of its own
        assert "Waiting in line" in joined, joined
        owner = olive.start(**SHORT)  # the app's owner always gets in line (at its end)
        assert "Waiting in line" in owner or "Started" in owner, owner
        for ident in (bob, olive):
            with contextlib.suppress(Exception):
                ident.predict(ident.client_id, api_name="/leave_queue")
