"""Issue 18: hostile bytes never take the studio down.

A seeded generator makes a few hundred odd files (the kinds the issue lists, plus random mutations of every
bundled sample). Each goes (a) through the CLI's `main(["data", FILE, "--json"])` in this process — safe only
because native parsing happens in a child process (studio.data.isolate); a few also through a real
`python -m studio data` subprocess, which checks exit codes and stderr without a traceback — and (b) to ONE
running `--shared` app through gradio_client on its file-taking endpoints (Data's upload, Evaluate's suite
upload), which must answer every case with one line and still answer afterwards.
"""

import contextlib
import gzip
import io
import json
import random
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from app_server import start_app
from conftest import ROOT

SEED = 18
BIG = 10 * 2**20  # "10 MB single lines"
EXAMPLE_LIMIT = 2000 + 200  # studio.data.MAX_EXAMPLE_CHARS plus the note that says it was cut
FIGURES = {}


def _jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _parquet(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _nest(depth: int, open_: str = "[", close: str = "]", inner: str = "1") -> str:
    return open_ * depth + inner + close * depth


def generate(seed: int = SEED) -> list[tuple[str, bytes]]:
    """(file name, bytes) for every case; names are unique and carry the extension under test."""
    import pyarrow as pa

    rng = random.Random(seed)
    cases: list[tuple[str, bytes]] = []

    def add(name, data):
        cases.append((f"{len(cases):03d}-{name}", data))

    # top-level JSON values that are not objects, alone, repeated, and before/after good rows
    for i, value in enumerate(["null", "0", "-1", "1.5", '"text"', "[]", "[1, 2]", '[{"text": "a"}]', "true",
                               "false", "{}", '""']):
        add(f"top{i}.jsonl", f"{value}\n{value}\n".encode())
        add(f"top{i}.json", value.encode())
        add(f"top{i}-first.jsonl", _jsonl(value, {"text": "a"}, {"text": "b"}))
        add(f"top{i}-last.jsonl", _jsonl({"text": "a"}, {"text": "b"}, value))
    # mixed types across rows, for each format's columns
    odd = [1, 1.5, None, True, [1], {"a": 1}, [], "", " ", -(2**63), 2**64]
    for cols in (["text"], ["prompt", "completion"], ["instruction", "response"], ["quote", "author"],
                 ["instruction", "input", "output"], ["mr", "ref"], ["chosen", "rejected"],
                 ["prompt", "chosen", "rejected"], ["messages"], ["conversations"], ["persona", "history", "reply"],
                 ["question", "answers"]):
        rows = [{c: rng.choice(odd + ["word"]) for c in cols} for _ in range(6)]
        add(f"mixed-{'-'.join(cols)}.jsonl", _jsonl({c: "hello" for c in cols}, *rows))
        add(f"mixed-{'-'.join(cols)}.json", json.dumps([{c: "hello" for c in cols}, *rows]).encode())
    # deep nesting, as a row and as a value
    for depth in (50, 200, 5000, 100_000):
        add(f"deep{depth}.jsonl", (_nest(depth) + "\n").encode())
        add(f"deep{depth}-obj.jsonl", ('{"text": ' + _nest(depth, '{"a": ', "}", '"x"') + "}\n").encode())
        add(f"deep{depth}.json", ("[" + _nest(depth) + "]").encode())
        add(f"deep{depth}-value.jsonl", ('{"text": ' + _nest(depth) + "}\n").encode())
    # huge numbers, NaN and Infinity literals
    for i, num in enumerate(["1e999", "-1e999", "1e-999", "9" * 5000, "-" + "9" * 400, str(2**64), str(2**63),
                             "NaN", "Infinity", "-Infinity", "0.1e-2147483649", "1" + "0" * 309]):
        add(f"num{i}.jsonl", f'{{"text": "a", "n": {num}}}\n{{"text": {num}}}\n'.encode())
        add(f"num{i}.json", f'[{{"text": {num}}}]'.encode())
    # lone surrogates, BOMs, invalid UTF-8, NUL bytes
    for i, esc in enumerate(["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b", "\\ud83d\\ude00"]):
        add(f"surrogate{i}.jsonl", f'{{"text": "{esc}"}}\n{{"text": "ok"}}\n'.encode())
        add(f"surrogate{i}.json", f'[{{"text": "{esc}"}}]'.encode())
        add(f"surrogate-key{i}.jsonl", f'{{"{esc}": "x", "text": "y"}}\n'.encode())
    for ext, body in ((".jsonl", '{"text": "hi"}\n'), (".json", '[{"text": "hi"}]'), (".csv", "text\nhi\n"),
                      (".txt", "hi\nthere\n")):
        add(f"bom8{ext}", b"\xef\xbb\xbf" + body.encode())
        add(f"bom16le{ext}", body.encode("utf-16-le").join([b"\xff\xfe", b""]))
        add(f"bom16be{ext}", body.encode("utf-16-be").join([b"\xfe\xff", b""]))
        add(f"bom-mid{ext}", body.encode() + b"\xef\xbb\xbf" + body.encode())
        for j, bad in enumerate([b"\xff", b"\xc3(", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"]):
            add(f"utf8bad{j}{ext}", body.encode().replace(b"hi", b"h" + bad + b"i"))
            add(f"utf8tail{j}{ext}", body.encode() + bad)
        add(f"nul-start{ext}", b"\x00" + body.encode())
        add(f"nul-late{ext}", body.encode() * 1000 + b"\x00\x00" + body.encode())
    add("nul-escaped.jsonl", _jsonl('{"text": "a\\u0000b"}', {"text": "c"}))
    # duplicate, empty and 20k-character keys; 20k columns
    add("dupkey.jsonl", b'{"text": "a", "text": "b"}\n')
    add("dupkey.json", b'[{"text": "a", "text": 1}]')
    add("emptykey.jsonl", _jsonl({"": "x", "text": "y"}, {"": 1}))
    add("longkey.jsonl", _jsonl({"k" * 20_000: "x", "text": "y"}))
    add("longkey.csv", ("k" * 20_000 + ",text\nx,y\n").encode())
    wide = {f"c{i}": "v" for i in range(20_000)}
    add("wide.jsonl", _jsonl({**wide, "text": "a"}))
    add("wide.csv", (",".join([*wide, "text"]) + "\n" + ",".join(["v"] * 20_001) + "\n").encode())
    add("wide.parquet", _parquet(pa.table({**{k: ["v"] for k in list(wide)[:20_000]}, "text": ["a"]})))
    # 10 MB single lines
    add("bigline.jsonl", _jsonl({"text": "x" * BIG}))
    add("bigline.txt", b"y" * BIG + b"\n")
    add("bigline.csv", b"text\n" + b"z" * BIG + b"\n")
    add("bigprompt.jsonl", _jsonl({"prompt": "p" * BIG, "completion": "c"}, {"prompt": "q", "completion": "d"}))
    # empty and blank files of every extension (and some the studio doesn't read)
    for ext in (".jsonl", ".json", ".csv", ".parquet", ".txt", ".gz", ".zip", ".xlsx", ""):
        add(f"empty{ext}", b"")
        add(f"blank{ext}", b" \n\t\n\r\n")
    # truncated and mislabelled Parquet, gzip, zip
    good = _parquet(pa.table({"text": ["alpha", "beta", "gamma"] * 20}))
    for cut in (4, 12, 100, len(good) // 2, len(good) - 8, len(good) - 1):
        add(f"trunc{cut}.parquet", good[:cut])
    for ext in (".jsonl", ".json", ".csv", ".txt"):
        add(f"parquet-as{ext}", good)
    gz = gzip.compress(_jsonl({"text": "a"}, {"text": "b"}), mtime=0)
    for ext in (".jsonl", ".parquet", ".csv", ".txt"):
        add(f"gzip-as{ext}", gz)
        add(f"gzip-trunc{ext}", gz[: len(gz) // 2])
        add(f"zip-as{ext}", _zip("d.jsonl", _jsonl({"text": "a"})))
    add("jsonl-as.parquet", _jsonl({"text": "a"}))
    add("magic-only.parquet", b"PAR1")
    add("magic-twice.parquet", b"PAR1PAR1")
    add("footer-lie.parquet", b"PAR1" + b"\x00" * 16 + (2**31 - 1).to_bytes(4, "little") + b"PAR1")
    # CSV: ragged rows, duplicate headers, unbalanced quotes and friends
    for i, body in enumerate([
        "prompt,completion\na,b\nc\n", "prompt,completion\na,b,c,d\n", "text,text\na,b\n", "text,Text, text\na,b,c\n",
        'text\n"unbalanced\n', 'text\n"a""\n', 'te"xt\nhi\n', '"text\nhi\n', "\ntext\nhi\n", ",\n,\n",
        "text\r\nhi\r\n", "text\rhi\r", "text;other\na;b\n", "text\n" + "\n" * 500 + "hi\n", "text\n\x7f\x01\x02\n",
        "instruction,response\n" + "a,\n" * 20, "\"\",\"\"\na,b\n", "text\n" + ",".join(["x"] * 1000) + "\n",
    ]):
        add(f"csv{i}.csv", body.encode())
    # Parquet columns a reader or renderer might not expect
    add("binary.parquet", _parquet(pa.table({"text": pa.array([b"\x00\xffabc", b"hi"], pa.binary())})))
    add("binary-prompt.parquet", _parquet(pa.table({"prompt": pa.array([b"\xff"], pa.binary()), "completion": ["c"]})))
    add("struct.parquet", _parquet(pa.table({"text": [{"a": 1}, {"a": 2}]})))
    add("nulls.parquet", _parquet(pa.table({"text": pa.array([None, None], pa.string())})))
    add("nulltype.parquet", _parquet(pa.table({"text": pa.nulls(3)})))
    add("ints.parquet", _parquet(pa.table({"text": [1, 2, 3]})))
    add("lists.parquet", _parquet(pa.table({"text": [["a"], ["b", "c"]]})))
    add("dict.parquet", _parquet(pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode()})))
    add("ts.parquet", _parquet(pa.table({"text": pa.array([0, 1], pa.timestamp("s"))})))
    add("msgs-struct.parquet", _parquet(pa.table({"messages": [[{"role": "user", "content": None},
                                                                 {"role": "assistant", "content": "x"}]]})))
    add("pref-null.parquet", _parquet(pa.table({"chosen": pa.array([None], pa.string()), "rejected": ["r"]})))
    add("nocols.parquet", _parquet(pa.table({})))
    add("zerorows.parquet", _parquet(pa.table({"text": pa.array([], pa.string())})))
    # chat messages: null/list content, unknown roles, 10k turns
    turn = lambda role, content: {"role": role, "content": content}  # noqa: E731
    for i, msgs in enumerate([
        [turn("user", None), turn("assistant", None)], [turn("user", "q"), turn("assistant", [{"type": "text", "text": "a"}])],
        [turn("user", "q"), turn("assistant", [1, None, "x"])], [turn("wizard", "q"), turn("assistant", "a")],
        [{"content": "q"}, turn("assistant", "a")], [turn(None, "q")], [turn("user", "q"), turn("assistant", 5)],
        [turn("user", "q"), turn("assistant", {"a": 1})], None, "hello", [], ["hi"], [[turn("user", "q")]],
        [turn("user", "q"), turn("assistant", "a")] * 5000,
    ]):
        add(f"chat{i}.jsonl", _jsonl({"messages": msgs}, {"messages": [turn("user", "q"), turn("assistant", "a")]}))
    add("sharegpt-odd.jsonl", _jsonl({"conversations": [{"from": "alien", "value": "x"}]},
                                     {"conversations": [{"from": "human"}, {"from": "gpt", "value": None}]}))
    # preference pairs with null, empty or equal sides
    for i, row in enumerate([
        {"prompt": "p", "chosen": None, "rejected": "r"}, {"prompt": "p", "chosen": "c", "rejected": None},
        {"prompt": "p", "chosen": "same", "rejected": "same"}, {"chosen": "same", "rejected": "same"},
        {"chosen": "Human: hi", "rejected": "Human: hi"}, {"prompt": None, "chosen": "c", "rejected": "r"},
        {"prompt": "p", "chosen": "", "rejected": ""}, {"chosen": [turn("user", "q")], "rejected": "r"},
        {"chosen": [turn("user", "q"), turn("assistant", None)], "rejected": [turn("user", "q"), turn("assistant", None)]},
        {"chosen": [], "rejected": []}, {"prompt": [1], "chosen": [turn("assistant", "c")], "rejected": [turn("assistant", "r")]},
    ]):
        add(f"pref{i}.jsonl", _jsonl(row, row))
    add("persona-odd.jsonl", _jsonl({"persona": "not a list", "history": None, "reply": "x"}))
    add("persona-q.jsonl", _jsonl({"question": "garbage", "answers": [None]}))
    # seeded random mutations of every bundled sample: byte flips, truncation, duplication
    for sample in sorted((ROOT / "assets" / "samples").glob("*")):
        data = sample.read_bytes()
        for k in range(8):
            b = bytearray(data)
            how = ("flip", "truncate", "duplicate", "splice")[k % 4]
            if how == "flip":
                for _ in range(rng.randint(1, 12)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
            elif how == "truncate":
                b = b[: rng.randrange(1, len(b))]
            elif how == "duplicate":
                i, j = sorted(rng.sample(range(len(b)), 2))
                b[j:j] = b[i:j]
            else:
                i = rng.randrange(len(b))
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
            add(f"{sample.stem}-{how}{k}{sample.suffix}", bytes(b))
    return cases


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for name, data in generate():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One --shared app, started in the background so that it warms up while the CLI cases run."""
    runs = tmp_path_factory.mktemp("fuzz-app") / "runs"
    runs.mkdir()
    started = {}
    # an upload limit just above the 10 MB cases, so that one upload past it is refused too
    thread = threading.Thread(target=lambda: started.update(
        app=start_app(runs, extra_args=["--shared"], env={"STUDIO_MAX_UPLOAD": "12mb"})))
    thread.start()

    def ready():
        thread.join()
        assert "app" in started, "the app did not start"
        return started["app"]

    yield ready
    thread.join()
    if "app" in started:
        started["app"][0].terminate()
        started["app"][0].wait(10)


def _check_cli_output(path, code: int, out: str) -> None:
    assert code in (0, 2), f"{path.name}: exit {code}"
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"{path.name}: {len(lines)} lines of output"
    result = json.loads(lines[0])
    if code == 2:
        assert set(result) == {"error"} and result["error"] and "\n" not in result["error"], result
        assert "Traceback" not in result["error"] and len(result["error"]) < 600, result["error"][:600]
    else:
        assert result["rows"] >= 1 and len(result["example"]) <= EXAMPLE_LIMIT, path.name


def test_generator_is_seeded_and_large():
    a, b = generate(), generate()
    assert [n for n, _ in a] == [n for n, _ in b] and all(x == y for (_, x), (_, y) in zip(a, b))
    assert len(a) >= 200


def test_cli_every_case(files, app):
    """Every case through the CLI's main() in this process: exit 0 with JSON or 2 with one line."""
    from studio import cli

    start, outcomes = time.time(), {0: 0, 2: 0}
    for path in files:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["data", str(path), "--json"])
        _check_cli_output(path, code, out.getvalue())
        outcomes[code] += 1
    FIGURES["cli"] = (len(files), outcomes, time.time() - start)
    print(f"\nCLI in-process: {len(files)} cases, {outcomes[0]} read, {outcomes[2]} refused with one line, "
          f"{time.time() - start:.1f} s")


@pytest.mark.parametrize("template", ["{quote:>10000000}", "{quote:.999999}", "{quote.__class__.__mro__}",
                                      "{quote[0]}", "{0}", "{}", "{quote:{author}}", "{quote", "}", "{" * 5000,
                                      "x" * 10_000, "{quote!z}", "{quote:>200}"])
def test_cli_templates_are_data(template):
    from studio import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["data", "quotes", "--template", template, "--json"])
    _check_cli_output(ROOT / "quotes", code, out.getvalue())
    if "10000000" in template or "__" in template or "[0]" in template:
        assert code == 2


def test_cli_subprocess_null_lines_and_deep_nesting(tmp_path):
    """The real CLI process, on the file that segfaulted pyarrow in the server's own process."""
    cases = {"x.jsonl": b"null\nnull\n", "deep.json": ("[" * 100_000 + "]" * 100_000).encode(),
             "binary.jsonl": bytes(range(256)) * 40}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    script = ("import sys; from studio import cli\n"
              "for f in sys.argv[1:]:\n"
              "    code = cli.main(['data', f, '--json']); print('exit', code, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script, *(str(tmp_path / n) for n in cases)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [line for line in lines if line.startswith("exit")] == ["exit 2"] * len(cases), proc.stdout
    assert "x.jsonl line 1: expected a JSON object per line" in proc.stdout
    one = subprocess.run([sys.executable, "-m", "studio", "data", str(tmp_path / "x.jsonl")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 2 and one.stderr.strip().count("\n") == 0 and one.stderr.startswith("error: x.jsonl")


def _ask(client, call, *args, api_name):
    """One call; Gradio's own refusal of a file type before any handler runs counts as a one-line answer."""
    from gradio_client.exceptions import AppError

    try:
        return client.predict(*args, api_name=api_name)
    except AppError as e:
        assert "Invalid file type" in str(e), (call, str(e)[:300])
        return None


def test_shared_app_survives_every_case(files, app):
    """Every case uploaded to the Data tab (and a third of the .jsonl ones as an Evaluate suite) of ONE --shared app,
    from four visitors at once; the app must answer each with one line and still be up afterwards."""
    from gradio_client import Client, handle_file

    proc, url = app()
    start, counts, lock = time.time(), {"uploads": 0, "suites": 0, "refused by type": 0}, threading.Lock()

    def visit(paths):
        client = Client(url, verbose=False)
        for path in paths:
            out = _ask(client, path.name, "Upload", "quotes", handle_file(str(path)), "", "", "", "", "auto", "", "",
                       api_name="/inspect_data")
            assert proc.poll() is None, f"the app died on {path.name}"
            if out is None:
                with lock:
                    counts["refused by type"] += 1
                continue
            status, info, _ = out
            assert ("studio-error" in status) != ("Loaded" in status), (path.name, status[:300])
            assert "unexpected error" not in status and "Traceback" not in status, (path.name, status[:300])
            assert len(info) < 4 * EXAMPLE_LIMIT + 4000, (path.name, len(info))
            with lock:
                counts["uploads"] += 1
            # suites are read by Python's json line by line (no native reader): every third .jsonl case
            if path.suffix == ".jsonl" and path.stat().st_size < 2**20 and int(path.name[:3]) % 3 == 0:
                out = _ask(client, path.name, [], "embedded/tiny-llama", "upload", "", 1, 1, "",
                           handle_file(str(path)), "row order", api_name="/evaluate")
                assert proc.poll() is None, f"the app died on {path.name} as a suite"
                message = out[1]
                assert "unexpected error" not in message and "Traceback" not in message, (path.name, message[:300])
                with lock:
                    counts["suites"] += 1

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(visit, files[i::4]) for i in range(4)]:
            f.result()
    # the server still answers a plain request afterwards
    status, info, _ = Client(url, verbose=False).predict("Bundled sample", "quotes", None, "", "", "", "", "auto", "",
                                                         "", api_name="/inspect_data")
    assert "Loaded" in status and "format **quotes**" in info
    assert sum(counts.values()) - counts["suites"] == len(files)
    too_big = files[0].parent / "too-big.jsonl"
    too_big.write_bytes(b'{"text": "' + b"x" * (13 * 2**20) + b'"}\n')
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client refuses it first
        Client(url, verbose=False).predict("Upload", "quotes", handle_file(str(too_big)), "", "", "", "", "auto", "",
                                           "", api_name="/inspect_data")
    import httpx  # and the server refuses it when posted straight to its upload route

    answer = httpx.post(url + "gradio_api/upload", files={"files": (too_big.name, too_big.read_bytes())}, timeout=120)
    assert answer.status_code >= 400 and "File size exceeded maximum allowed size" in answer.text, answer.text[:300]
    assert proc.poll() is None
    print(f"\nshared app: {counts}, 0 crashes, {time.time() - start:.1f} s")


def test_bounds_on_text_a_visitor_types(tmp_path, monkeypatch):
    """Persona and message length, turns kept, stories in a corpus: refused or cut with one line."""
    from studio import chat, retrieval
    from studio.errors import StudioError

    with pytest.raises(StudioError, match=r"persona: 4,001 characters; at most 4,000"):
        chat.check_length("persona", "x" * 4001, chat.MAX_PERSONA_CHARS)
    with pytest.raises(StudioError, match="chat history: expected a list"):
        chat.clean_history("not a list")
    assert chat.clean_history([None, 5, {"role": "wizard"}, {"role": "user", "content": None}]) == [
        {"role": "user", "content": ""}]
    corpus = tmp_path / "stories.jsonl"
    corpus.write_text("".join(json.dumps({"text": "s" * 30_000}) + "\n" for _ in range(6)))
    assert len(retrieval.load_corpus(str(corpus)).stories[0]["text"]) == retrieval.MAX_STORY_CHARS
    monkeypatch.setattr(retrieval, "MAX_STORIES", 5)
    with pytest.raises(StudioError, match="stories.jsonl: 6 stories; a story corpus holds at most 5"):
        retrieval.load_corpus(str(corpus))
