"""Issue 11, promise 2 (on the data path of issue 7): every malformed input gets one clear line — a StudioError
from the backend, and exit 2 with one `error:` line from the CLI — never a traceback."""

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from studio import cli
from studio.data import prepare_dataset
from studio.errors import StudioError
from studio.recipes import load_recipe

GOOD = [{"text": "hello"}, {"text": "world"}]


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# name, content (str | bytes | callable(tmp_path) -> path), extra prepare_dataset kwargs, expected message
DATA_CASES = [
    ("empty.jsonl", "", {}, r"empty\.jsonl: the file is empty"),
    ("blank.jsonl", "\n  \n\n", {}, r"blank\.jsonl: the file is empty"),
    ("binary.jsonl", bytes(range(256)) * 4, {}, r"binary\.jsonl: binary data"),
    ("binary.txt", b"\x00\x01\x02abc\x00" * 100, {}, r"binary\.txt: binary data"),
    ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), {}, r"latin1\.csv: not UTF-8 \(byte 0xe9"),
    ("latin1.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"), {}, r"latin1\.jsonl: not UTF-8 \(byte 0xe9"),
    ("utf16.jsonl", '{"text": "hi"}\n'.encode("utf-16"), {}, r"utf16\.jsonl: not UTF-8 \(byte 0xff at offset 0"),
    ("badline.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', {}, r"badline\.jsonl line 3: malformed JSON"),
    ("torn.jsonl", '{"text": "a"}\n\n{"text": "b', {}, r"torn\.jsonl line 3: malformed JSON"),
    ("array.jsonl", "[1, 2]\n[3, 4]\n", {}, r"array\.jsonl line 1: expected a JSON object per line, got list"),
    ("strings.jsonl", '"one"\n"two"\n', {}, r"strings\.jsonl line 1: expected a JSON object per line, got str"),
    ("nofields.jsonl", "{}\n{}\n", {}, r"nofields\.jsonl: the records have no fields"),
    ("broken.json", '[{"text": "a"},\n {"text": ', {}, r"broken\.json line 2: malformed JSON"),
    ("numbers.json", "[1, 2]", {}, r"numbers\.json record 1: expected an object, got int"),
    ("scalar.json", "42", {}, r"scalar\.json: expected a list of records, got int"),
    ("ragged.csv", "prompt,completion\na,b\nc,d,e\n", {}, r"ragged\.csv row 3: 3 fields, but the header has 2"),
    ("dupe.csv", "text,text\na,b\n", {}, r"dupe\.csv row 1: duplicate column names"),
    ("header_only.csv", "prompt,completion\n", {}, r"header_only\.csv: the file is empty \(no records\)"),
    ("columns.jsonl", _jsonl([{"alpha": 1, "beta": 2}]), {}, r"no column looks like a prompt or text, found \[alpha, beta\]"),
    ("forced.jsonl", _jsonl(GOOD), {"format": "dolly"}, r"forced\.jsonl: format 'dolly' needs the columns instruction/response"),
    ("unknown_format.jsonl", _jsonl(GOOD), {"format": "yaml"}, r"unknown format 'yaml'"),
    ("targets.jsonl", _jsonl([{"instruction": "a", "response": ""}] * 3), {}, r"no usable rows after cleaning \(3 empty target\)"),
    ("msgtype.jsonl", _jsonl([{"messages": "hi there"}]), {}, r"msgtype\.jsonl line 1: expected a list of messages, got str"),
    ("msgitem.jsonl", _jsonl([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
                              {"messages": ["hi"]}]), {}, r"msgitem\.jsonl (line|row) 2: expected a message object, got str"),
    ("role.jsonl", "\n" + _jsonl([{"messages": [{"role": "user", "content": "hi"}]},
                                  {"messages": [{"role": "robot", "content": "beep"}]}]), {}, r'role\.jsonl line 3: unknown role "robot"'),
    ("pairs.jsonl", _jsonl([{"chosen": "Human: hi", "rejected": "Bot: no"}]), {}, r"pairs\.jsonl line 1: chosen and rejected share no 'Assistant:' turn"),
    ("persona.jsonl", _jsonl([{"question": "hello there", "answers": ["hi"]}]), {}, r"persona\.jsonl line 1: question does not start with 'persona:'"),
    ("convai2.txt", "1 your persona: i like tea.\nno number here\n", {}, r"convai2\.txt line 2: expected a numbered ConvAI2 line"),
    ("template.jsonl", _jsonl(GOOD), {"format": "text", "template": "{text"}, r"template '\{text' is not valid"),
    ("gzip.jsonl", gzip.compress(_jsonl(GOOD).encode()), {}, r"gzip\.jsonl: this is a gzip archive, not \.jsonl text"),
    ("zip.jsonl", _zip("data.jsonl", _jsonl(GOOD).encode()), {}, r"zip\.jsonl: this is a zip archive, not \.jsonl text"),
    ("fake.parquet", "text\nnot parquet\n", {}, r"fake\.parquet: not a readable Parquet file"),
    ("sheet.xlsx", "x", {}, r"sheet\.xlsx: unsupported file type '\.xlsx'"),
    ("huge_line.jsonl", lambda tmp: _huge_line(tmp / "huge_line.jsonl"), {}, r"huge_line\.jsonl line 1: malformed JSON"),
    ("a_folder", lambda tmp: _folder(tmp / "a_folder"), {}, r"a_folder: could not load"),
    ("missing.jsonl", lambda tmp: tmp / "missing.jsonl", {}, r"missing\.jsonl: no such file"),
]


def _huge_line(path):
    """A 50 MB single line that never closes its string."""
    with open(path, "w") as f:
        f.write('{"text": "')
        f.write("x" * (50 * 2**20))
    return path


def _folder(path):
    path.mkdir()
    (path / "notes.md").write_text("not data")
    return path


def _make(tmp_path, name, content):
    if callable(content):
        return content(tmp_path)
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _one_line(message: str):
    assert message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("name,content,kwargs,pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_backend_and_cli(tmp_path, capsys, name, content, kwargs, pattern):
    path = _make(tmp_path, name, content)
    with pytest.raises(StudioError, match=pattern) as info:
        prepare_dataset(str(path), **kwargs)
    _one_line(str(info.value))
    argv = ["data", str(path)] + [x for k, v in kwargs.items() for x in (f"--{k}", v)]
    capsys.readouterr()
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(info.value) in err


def test_path_outside_the_allowed_folders_in_shared_mode(monkeypatch, tmp_path):
    from studio.access import check_data_source

    secret = tmp_path / "secret.jsonl"
    secret.write_text(_jsonl(GOOD))
    monkeypatch.setenv("STUDIO_SHARED", "1")
    for source in (str(secret), "/etc/passwd", "../../etc/hostname"):
        with pytest.raises(StudioError, match="on a shared studio only bundled samples") as info:
            check_data_source(source)
        _one_line(str(info.value))
    assert check_data_source("quotes") == "quotes"  # bundled samples stay readable


RECIPE_CASES = [
    ("unknown_key.yaml", "lerning_rate: 0.1\n", r"unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\)"),
    ("wrong_type.yaml", "learning_rate: fast\n", r"'learning_rate' must be float, got 'fast'"),
    ("bad_int.yaml", "max_steps: many\n", r"'max_steps' must be int"),
    ("range.yaml", "lora_r: 0\n", r"'lora_r' must be an integer ≥ 1, got 0"),
    ("dataset_key.yaml", "dataset: {source: quotes, sourse: x}\n", r"unknown key 'dataset\.sourse' \(did you mean 'source'\?\)"),
    ("dataset_type.yaml", "dataset: quotes\n", r"'dataset' must be a mapping"),
    ("method.yaml", "method: ppo\n", r"unknown method 'ppo'"),
    ("not_yaml.yaml", "name: [unclosed\n", r"not valid YAML"),
    ("a_list.yaml", "- one\n- two\n", r"expected a mapping of keys to values"),
    ("no_source.yaml", "dataset: {format: text}\n", r"dataset\.source is missing"),
    ("prompts.yaml", "eval_prompts: hello\n", r"eval_prompts must be a list of strings"),
]
BASE_RECIPE = (ROOT / "recipes" / "tiny-quotes.yaml").read_text()


@pytest.mark.parametrize("name,extra,pattern", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_backend_and_cli(tmp_path, capsys, name, extra, pattern):
    path = tmp_path / name
    if name in ("a_list.yaml",):
        path.write_text(extra)
    else:  # the good tiny recipe, with one bad key appended (a later key wins in YAML)
        path.write_text(BASE_RECIPE.replace("dataset:\n  source: quotes\n  format: quotes\n  splits: 80/10/10\n", "")
                        + "\n" + ("dataset: {source: quotes}\n" if "dataset" not in extra else "") + extra)
    with pytest.raises(StudioError, match=pattern) as info:
        load_recipe(path)
    _one_line(str(info.value))
    capsys.readouterr()
    assert cli.main(["train", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and str(info.value) in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_cli_process_exits_2_with_one_line(tmp_path):
    """The real command line, as a user runs it: exit status 2, one line, no traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": oops}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "studio", "data", str(bad)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: bad.jsonl line 2: malformed JSON (Expecting value at column 10)"]
