"""Budgets (issue 25, findings 1, 5 and 7): a parsed file's decoded rows and bytes, checked in the parse child;
a visitor's uploads, runs, pairs files and saved results on a shared studio; uploads of ended sessions
cleaned up; and the nesting guard at no cost on honest data. Each failed before its fix.

The app tests run ONE `--shared` app with the limits turned low (megabytes and counts, not gigabytes)."""

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from app_server import start_app


def _bomb(path: Path, rows: int, width: int = 2000) -> Path:
    """The Parquet bomb's shape: one dictionary-encoded column, `rows` copies of one `width`-character string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array(["x" * width]).take(pa.array([0] * rows))}), path)
    return path


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM"))


# ---- the parse child refuses what decodes too big (finding 1) --------------------------------------------
def test_a_parquet_bomb_is_refused_while_it_decodes_naming_the_file_and_the_variable(tmp_path, monkeypatch):
    from studio.data.sources import read_file
    from studio.errors import StudioError

    bomb = _bomb(tmp_path / "bomb.parquet", 40_000)  # 80 MB decoded from a ~10 KB file
    assert bomb.stat().st_size < 50_000
    monkeypatch.setenv("STUDIO_MAX_DECODED_MB", "20")
    with pytest.raises(StudioError) as e:
        read_file(bomb)
    msg = str(e.value)
    assert "\n" not in msg and "bomb.parquet" in msg and "20 MB" in msg and "STUDIO_MAX_DECODED_MB" in msg, msg
    monkeypatch.setenv("STUDIO_MAX_DECODED_MB", "1024")
    monkeypatch.setenv("STUDIO_MAX_ROWS", "1000")  # refused from the footer, before any row is decoded
    with pytest.raises(StudioError, match=r"bomb\.parquet \(40,000 rows in its footer\).*STUDIO_MAX_ROWS"):
        read_file(bomb)
    monkeypatch.delenv("STUDIO_MAX_ROWS")
    assert len(read_file(bomb).dataset) == 40_000  # within the limits it reads as before


def test_a_jsonl_over_the_row_limit_is_refused_in_the_child(write, monkeypatch):
    from studio.data.sources import read_file
    from studio.errors import StudioError

    path = write("many.jsonl", [{"text": f"row {i}"} for i in range(50)])
    monkeypatch.setenv("STUDIO_MAX_ROWS", "20")
    with pytest.raises(StudioError, match=r"many\.jsonl \(50 rows\): over the limit of 20 rows.*STUDIO_MAX_ROWS"):
        read_file(path)


def test_a_table_within_the_limits_is_mapped_not_copied(tmp_path):
    """The parent memory-maps the child's Arrow file: the server's private memory does not grow by the table."""
    from studio.data.sources import read_file

    bomb = _bomb(tmp_path / "wide.parquet", 60_000)  # 114 MB decoded, under the default limit

    def anon():
        return int(re.search(r"RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    read_file(_bomb(tmp_path / "warm.parquet", 10))  # imports and the helper, before measuring
    before = anon()
    raw = read_file(bomb)
    assert raw.dataset.data.nbytes > 100 * 2**20
    assert anon() - before < 40 * 2**20, (anon() - before) / 2**20  # a copy (or datasets' pickled fingerprint) is 114 MB


# ---- the nesting guard costs nothing on honest data, and still finds every deep line (finding 7) ----------
def _exact_depth_line(lines: list[str], limit: int) -> int | None:
    """The first line (1-based) nested deeper than `limit`, brackets in strings not counted: the reference."""
    for n, line in enumerate(lines, 1):
        depth, in_string, escaped = 0, False, False
        for ch in line:
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
                continue
            if ch == '"':
                in_string = True
            elif ch in "[{":
                depth += 1
                if depth > limit:
                    return n
            elif ch in "]}":
                depth -= 1
    return None


def test_the_nesting_check_finds_the_same_first_deep_line_as_an_exact_scan(tmp_path):
    from studio.data.sources import MAX_DEPTH, _check_json_depth
    from studio.errors import StudioError

    rng = random.Random(0)

    def line():
        kind = rng.random()
        d = rng.choice([1, 10, 63, 64, 65, 66, 200])
        if kind < 0.4:
            return json.dumps({"a": "text " * rng.randint(0, 5)})
        if kind < 0.6:  # brackets inside a string, many of them
            return json.dumps({"a": "[" * d + "{" * d})
        if kind < 0.8:
            return '{"a": ' + "[" * d + "1" + "]" * d + "}"
        return '{"a": ' + '{"b": ' * d + "1" + "}" * d + "}"

    for trial in range(40):
        lines = [line() for _ in range(rng.randint(1, 30))]
        path = tmp_path / f"t{trial}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        expected = _exact_depth_line(lines, MAX_DEPTH)
        try:
            _check_json_depth(path, per_line=True)
            found = None
        except StudioError as e:
            found = int(re.search(r"line (\d+):", str(e)).group(1))
        assert found == expected, (trial, found, expected)


# ---- a visitor's disk (finding 5) ----------------------------------------------------------------------------
def test_runs_pairs_and_results_per_visitor(tmp_path, monkeypatch):
    from studio.access import Visitor, acting_for, claim
    from studio.errors import StudioError
    from studio.evaluate.results import save_result

    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    monkeypatch.setenv("STUDIO_VISITOR_RUNS", "2")
    monkeypatch.setenv("STUDIO_VISITOR_RESULTS", "1")
    # two signed-in accounts: each pays for itself (anonymous sessions share one pool: the test below)
    a, b = Visitor(frozenset({"session:a"}), "alice"), Visitor(frozenset({"session:b"}), "bob")
    with acting_for(a):
        for name in ("a-1", "a-2"):
            (runs / name).mkdir(parents=True)
            claim(runs / name)
        (runs / "a-3").mkdir()
        with pytest.raises(StudioError, match=r"a-3: you have 2 here.*2 runs per visitor.*STUDIO_VISITOR_RUNS"):
            claim(runs / "a-3")
        assert not (runs / "a-3").exists()  # the refused run's empty folder is not left behind
        claim(runs / "a-1")  # what is already theirs is not counted again
        save_result({"owner": "evals", "name": "first", "rows": []})
        with pytest.raises(StudioError, match="STUDIO_VISITOR_RESULTS"):
            save_result({"owner": "evals", "name": "second", "rows": []})
    with acting_for(b):  # another visitor has their own budget
        (runs / "b-1").mkdir()
        claim(runs / "b-1")
        save_result({"owner": "evals", "name": "b-first", "rows": []})
        monkeypatch.setenv("STUDIO_VISITOR_RUN_MB", "1")  # disk: a visitor whose runs hold more starts no other
        (runs / "b-1" / "weights.bin").write_bytes(b"\0" * (2 * 2**20))
        (runs / "b-2").mkdir()
        with pytest.raises(StudioError, match=r"your runs hold 2\.0 MB.*STUDIO_VISITOR_RUN_MB"):
            claim(runs / "b-2")


def test_anonymous_sessions_share_one_budget_and_accounts_have_their_own(tmp_path, monkeypatch):
    """Sessions and browser ids are free to mint: every anonymous visitor pays from one pool (issue 31, finding 2),
    while what each made stays readable by its maker alone."""
    from studio.access import Visitor, acting_for, claim, may_read
    from studio.errors import StudioError

    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    monkeypatch.setenv("STUDIO_VISITOR_RUNS", "2")
    minted = [Visitor(frozenset({f"session:sybil-{i}", f"client:{i:032x}"})) for i in range(5)]
    assert {v.payer for v in minted} == {"anonymous"}
    for i, v in enumerate(minted[:2]):
        with acting_for(v):
            (runs / f"s-{i}").mkdir(parents=True)
            claim(runs / f"s-{i}")
    with acting_for(minted[2]):  # a third fresh session is the same payer: over the pool's budget
        (runs / "s-2").mkdir()
        with pytest.raises(StudioError, match=r"s-2: you have 2 here.*STUDIO_VISITOR_RUNS"):
            claim(runs / "s-2")
        assert not may_read(runs / "s-0")  # one pool to pay from, not one another's runs to read
    with acting_for(Visitor(frozenset({"session:carol"}), "carol")):  # a signed-in account has its own budget
        (runs / "c-1").mkdir()
        claim(runs / "c-1")
    # with a trusted proxy, an anonymous visitor pays as their address (never a header's word otherwise)
    monkeypatch.setenv("STUDIO_TRUSTED_PROXIES", "10.0.0.1")
    from studio.access import payer_of

    assert payer_of(None, "203.0.113.7") == "address:203.0.113.7"
    monkeypatch.delenv("STUDIO_TRUSTED_PROXIES")
    assert payer_of(None, "203.0.113.7") == "anonymous" and payer_of("Dave", "203.0.113.7") == "user:dave"


def test_uploads_not_used_for_the_ttl_are_swept_and_the_total_is_bounded(tmp_path, monkeypatch):
    from studio.budgets import cache_schedule, sweep_uploads

    monkeypatch.setenv("STUDIO_UPLOAD_TTL", "60")
    old = tmp_path / "payer-a" / "home-a" / "h1" / "old.jsonl"  # <runs>/.uploads/<payer>/<home>/<upload>/<name>
    new = tmp_path / "payer-b" / "home-b" / "h2" / "new.jsonl"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert sweep_uploads(tmp_path, force=True) == 1
    assert not old.exists() and not old.parent.exists() and new.exists()
    monkeypatch.setenv("STUDIO_UPLOADS_TOTAL_MB", "0")  # over the total: the least recently used go first
    assert sweep_uploads(tmp_path, force=True) == 1 and not new.exists()
    assert cache_schedule() == (60, 60)


def test_raw_uploads_nobody_handed_over_leave_after_minutes(tmp_path, monkeypatch):
    """Gradio's upload route takes files from anyone with no session: what nobody handed to the studio within
    STUDIO_RAW_UPLOAD_TTL is removed (issue 31, finding 4); only files in Gradio's record of uploads are touched."""
    from studio.budgets import sweep_raw_uploads

    monkeypatch.setenv("STUDIO_RAW_UPLOAD_TTL", "300")
    stale, fresh = tmp_path / "h1" / "stale.jsonl", tmp_path / "h2" / "fresh.jsonl"
    download = tmp_path / "h3" / "result.csv"  # a file Gradio made for a page: not in its upload record
    for p in (stale, fresh, download):
        p.parent.mkdir()
        p.write_text("{}")
    os.utime(stale, (time.time() - 400, time.time() - 400))
    os.utime(download, (time.time() - 400, time.time() - 400))
    record = {str(stale), str(fresh), str(tmp_path / "gone" / "x.jsonl")}
    assert sweep_raw_uploads(record) == 1
    assert not stale.exists() and not stale.parent.exists() and fresh.exists() and download.exists()
    assert record == {str(fresh)}


def test_a_shared_app_deletes_gradios_cache_after_the_upload_ttl(monkeypatch, tmp_path):
    from studio.ui import build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the sweeper this starts looks only here
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_UPLOAD_TTL", "30")
    assert build_app().delete_cache == (30, 30)
    monkeypatch.delenv("STUDIO_SHARED")
    assert build_app().delete_cache is None  # locally the owner's uploads stay


# ---- against a --shared app with the limits turned low ------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budgets")
    (tmp / "runs").mkdir()
    (tmp / "uploads").mkdir()
    proc, url = start_app(tmp / "runs", extra_args=["--shared"], env={
        "GRADIO_TEMP_DIR": str(tmp / "uploads"), "STUDIO_MAX_DECODED_MB": "64", "STUDIO_VISITOR_UPLOADS": "3",
        "STUDIO_VISITOR_UPLOAD_MB": "1", "STUDIO_VISITOR_PAIRS": "1", "OMP_NUM_THREADS": "1",
        "STUDIO_UPLOADS_TOTAL_MB": "1", "STUDIO_AUTH": ",".join(f"{n}:pw-{n}" for n in ACCOUNTS)})
    proc.tmp = tmp
    proc.url = url
    yield proc
    proc.terminate()
    proc.wait(10)


ACCOUNTS = ("alice", "bob", "carol", "dave", "erin")  # accounts of the app (--auth): each pays for itself


def _client(app, name="alice"):
    from gradio_client import Client

    return Client(app.url, verbose=False, auth=(name, f"pw-{name}"))


def _inspect_upload(client, path):
    from gradio_client import handle_file

    status, info, _ = client.predict("Upload", "quotes", handle_file(str(path)), "", "", "", "", "auto", "", "",
                                     api_name="/inspect_data")
    return status, info


def test_the_parquet_bomb_is_refused_and_the_server_grows_less_than_200_mb(app, tmp_path):
    visitor = _client(app, "carol")
    honest = tmp_path / "honest.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"Quote: row {i}" for i in range(40)]}), honest)
    status, info = _inspect_upload(visitor, honest)  # the parse path warmed up (imports, the helper)
    assert "Loaded" in status, status
    settled, last = time.time() + 60, _memory(app.pid)[0]
    while time.time() < settled:  # the app's background imports done: its memory is steady
        time.sleep(1.5)
        now = _memory(app.pid)[0]
        if abs(now - last) < 5 * 2**20:
            break
        last = now
    rss, hwm = _memory(app.pid)
    bomb = _bomb(tmp_path / "bomb.parquet", 150_000)  # 286 MB decoded from ~40 KB
    status, info = _inspect_upload(visitor, bomb)
    assert "bomb.parquet" in status and "STUDIO_MAX_DECODED_MB" in status and "64 MB" in status, status
    rss_after, hwm_after = _memory(app.pid)
    assert rss_after - rss < 200 * 2**20 and hwm_after - hwm < 200 * 2**20, ((rss_after - rss) / 2**20,
                                                                            (hwm_after - hwm) / 2**20)


def test_uploads_past_the_visitors_quota_are_refused_with_the_variable(app, tmp_path):
    visitor = _client(app)
    for i in range(3):
        path = tmp_path / f"q{i}.jsonl"
        path.write_text("".join(json.dumps({"quote": f"row {i}.{j}", "author": "x"}) + "\n" for j in range(12)))
        status, _ = _inspect_upload(visitor, path)
        assert "Loaded" in status, status
    path = tmp_path / "q3.jsonl"
    path.write_text(json.dumps({"quote": "one more", "author": "x"}) + "\n")
    status, _ = _inspect_upload(visitor, path)
    assert "STUDIO_VISITOR_UPLOADS" in status and "3 files" in status, status
    big = tmp_path / "big.jsonl"  # bytes: a second visitor with one file over their 1 MB
    big.write_text("".join(json.dumps({"quote": "y" * 1000, "author": "x"}) + "\n" for _ in range(1200)))
    status, _ = _inspect_upload(_client(app, "bob"), big)
    assert "STUDIO_VISITOR_UPLOAD_MB" in status, status
    copies = list((app.tmp / "runs" / ".uploads").glob("*/*/*/big.jsonl"))
    assert not copies  # refused before it was copied into the visitor's folder


def test_a_visitors_upload_has_no_public_address_and_raw_uploads_block_nobody(app, tmp_path):
    """Issue 31, findings 1, 4 and 5: a handed-over upload leaves Gradio's served folder at once (its copy lives
    in the runs folder, which no route serves); raw files nobody handed over count against no one's total; two
    visitors sending the same bytes each get their own copy (nothing to squat on or to learn)."""
    import urllib.error
    import urllib.request

    raw_uploads = app.tmp / "uploads"
    sample = tmp_path / "same.jsonl"
    sample.write_text(json.dumps({"quote": "the same bytes", "author": "x"}) + "\n")
    for i in range(5):  # five raw uploads nobody handed over, 300 KB each (1.5 MB: over the 1 MB total), as
        junk = raw_uploads / f"{i:040x}" / f"junk{i}.jsonl"  # Gradio's upload route leaves them (no session)
        junk.parent.mkdir(parents=True, exist_ok=True)
        junk.write_bytes(b"\0" * 300_000)
    for name in ("dave", "erin"):  # each hands over the same bytes: each gets a copy, neither is refused
        status, _ = _inspect_upload(_client(app, name), sample)
        assert "Loaded" in status, (name, status)  # the raw files above (STUDIO_UPLOADS_TOTAL_MB=1) block nobody
    copies = sorted((app.tmp / "runs" / ".uploads").glob("*/*/*/same.jsonl"))
    assert len(copies) == 2 and len({c.parents[2] for c in copies}) == 2, copies  # two payers, two copies
    assert not list(raw_uploads.glob("*/same.jsonl"))  # the raw upload left Gradio's served folder
    for copy in copies:  # Gradio's file route serves nothing in the runs folder
        try:
            answer = urllib.request.urlopen(app.url + "gradio_api/file=" + str(copy), timeout=30)
            assert b"the same bytes" not in answer.read()
        except urllib.error.HTTPError as e:
            assert e.code in (401, 403, 404), e.code  # 401 here: accounts on (test_attack tries it without)


def test_labelling_sessions_per_visitor(app):
    visitor = _client(app)

    def start(name):
        return visitor.predict(None, name, "embedded/tiny-llama", 0, 8, "one prompt", "", api_name="/start_labelling")

    _status, message, prompt, *_ = start("first-session")
    assert prompt == "one prompt", message
    _status, message, prompt, *_ = start("second-session")
    assert "STUDIO_VISITOR_PAIRS" in message and prompt != "one prompt", message
    assert not (app.tmp / "runs" / "pairs" / "second-session.jsonl").exists()


def test_batched_instruction_rendering_gives_the_rows_the_row_renderer_gives():
    """Dolly and Alpaca without a template render a batch in one loop over the columns (finding 7: the row
    renderer cost ~13 s a million rows); the rows must be the row renderer's, odd values included."""
    from studio.data.formats import get_format

    rng = random.Random(0)
    values = [None, "", "  ", " text ", "a\nb", 7, 0, 3.5, ["x"], "ends in space ", "\tTab"]
    for name, context, answer in (("dolly", "context", "response"), ("alpaca", "input", "output")):
        fmt = get_format(name, ["instruction", context, answer], "x")
        rows = [{"instruction": rng.choice(values), context: rng.choice(values), answer: rng.choice(values)}
                for _ in range(400)]
        one_by_one = [r for r in (fmt.render(row, None) for row in rows) if r is not None]
        batch = fmt.render_batch({k: [row[k] for row in rows] for k in rows[0]})
        assert [dict(zip(batch, v)) for v in zip(*batch.values())] == one_by_one
        assert 0 < len(one_by_one) < len(rows)
