"""The Parquet bomb written the hostile way (issue 31, finding 7): one column stored as an Arrow dictionary, a
million indices into one long string. The parse child counts what a column's rows take once materialised
(a dictionary's values gathered by its indices), not its Arrow buffers, refuses the file batch by batch
before the caller sees a row, and hands back plain columns, so the caller never expands anything itself.

Each test here failed before that fix: the CLI printed the bomb's example (3.7 GB peak), the app's backend
grew by gigabytes, and an honest dictionary file was expanded on the caller's heap."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

MB = 2**20


def _dictionary_bomb(path: Path, rows: int, width: int) -> Path:
    """`rows` indices into a dictionary of one `width`-character string, written as a DictionaryArray (Parquet
    keeps the Arrow type in its footer, so pyarrow reads it back as a dictionary, not as plain strings)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["x" * width]))
    pq.write_table(pa.table({"text": column}), path)
    assert pq.ParquetFile(path).schema_arrow.field("text").type == pa.dictionary(pa.int32(), pa.string())
    return path


def _memory() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in bytes."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM"))


def _reset_peak() -> bool:
    """VmHWM back to the current RSS (Linux: 5 > /proc/self/clear_refs), so a later VmHWM is this test's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cli_with_peak(*args: str, env: dict) -> dict:
    """`python -m studio ARGS` in a subprocess, and the peak RSS of it and every process it waited for
    (RUSAGE_CHILDREN of a fresh wrapper, so nothing this test process ran before counts)."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "r = subprocess.run([sys.executable, '-m', 'studio', *sys.argv[1:]], capture_output=True, text=True)\n"
               "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr,\n"
               "                  'peak': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n")
    done = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _env(**limits: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_MAX_")}
    return {**env, **limits}


# ---- 1. the CLI ----------------------------------------------------------------------------------------------
def test_the_cli_refuses_the_issues_dictionary_bomb_in_one_line_and_stays_small(tmp_path):
    """The issue's file: 1,000,000 indices into one 1,200-character string, 1.12 GiB decoded (over the default
    1,024 MB) from ~125 KB. Before: accepted, its example printed, 3.7 GB peak."""
    bomb = _dictionary_bomb(tmp_path / "bomb.parquet", 1_000_000, 1200)
    assert 100_000 < bomb.stat().st_size < 250_000, bomb.stat().st_size
    run = _cli_with_peak("data", str(bomb), env=_env())
    assert run["rc"] == 2, run
    lines = run["err"].strip().splitlines()
    assert len(lines) == 1 and not run["out"].strip(), run
    assert re.fullmatch(r"error: bomb\.parquet \([\d,.]+ MB decoded by row [\d,]+\): over the limit of 1,024 MB "
                        r"decoded size per file \(the app's owner sets it with STUDIO_MAX_DECODED_MB\)", lines[0]), lines
    assert run["peak"] < 400 * MB, run["peak"] / MB  # the column expands to 1,148 MB; a bare `studio data`: ~150 MB


def test_the_cli_refuses_the_full_size_2000_character_bomb_from_its_first_batches(tmp_path):
    """docs/budgets.md's file, 1,000,000 × 2,000 characters (1.9 GB decoded from ~207 KB), at the default limits:
    refused while the child counts its first batches (by row ~540,000), nothing materialised. Before: 4.6 GB."""
    bomb = _dictionary_bomb(tmp_path / "bomb.parquet", 1_000_000, 2000)
    assert 100_000 < bomb.stat().st_size < 250_000, bomb.stat().st_size
    run = _cli_with_peak("data", str(bomb), env=_env())
    assert run["rc"] == 2 and "bomb.parquet" in run["err"] and "1,024 MB" in run["err"], run
    by_row = int(re.search(r"decoded by row ([\d,]+)", run["err"]).group(1).replace(",", ""))
    assert by_row < 600_000, by_row  # refused as soon as the count passed the limit, not after the whole file
    assert run["peak"] < 400 * MB, run["peak"] / MB


# ---- 2. the backend the app's Data tab calls -----------------------------------------------------------------
def test_the_apps_backend_refuses_the_bomb_and_the_caller_grows_less_than_200_mb(tmp_path):
    """`prepare_dataset` (what the Data tab's inspect calls) on the full-size bomb at the default limits."""
    from studio.data import prepare_dataset
    from studio.errors import StudioError

    warm = _dictionary_bomb(tmp_path / "warm.parquet", 100, 50)
    assert len(prepare_dataset(str(warm)).splits["train"]) == 80  # imports and the parse helper, before measuring
    bomb = _dictionary_bomb(tmp_path / "bomb.parquet", 1_000_000, 2000)
    peak_known = _reset_peak()
    rss, hwm = _memory()
    with pytest.raises(StudioError) as e:
        prepare_dataset(str(bomb))
    msg = str(e.value)
    assert "\n" not in msg and "bomb.parquet" in msg and "1,024 MB" in msg and "STUDIO_MAX_DECODED_MB" in msg, msg
    rss_after, hwm_after = _memory()
    assert rss_after - rss < 200 * MB, (rss_after - rss) / MB
    if peak_known:
        assert hwm_after - hwm < 200 * MB, (hwm_after - hwm) / MB


# ---- 3. scaled (a low limit), nested dictionaries, and the large-file path ------------------------------------
def test_a_scaled_dictionary_bomb_is_refused_while_the_child_streams_it(tmp_path, monkeypatch):
    from studio.data.sources import read_file
    from studio.errors import StudioError

    bomb = _dictionary_bomb(tmp_path / "small-bomb.parquet", 150_000, 2000)  # 286 MB decoded from ~37 KB
    assert bomb.stat().st_size < 60_000
    monkeypatch.setenv("STUDIO_MAX_DECODED_MB", "64")  # read when it is checked
    with pytest.raises(StudioError, match=r"small-bomb\.parquet \([\d,.]+ MB decoded by row [\d,]+\): over the limit "
                                          r"of 64 MB decoded size per file .*STUDIO_MAX_DECODED_MB"):
        read_file(bomb)
    monkeypatch.setenv("STUDIO_MAX_DECODED_MB", "400")  # within the limit it reads, every row
    table = read_file(bomb).dataset.data
    assert table.num_rows == 150_000 and str(table.schema.field("text").type) == "string"


def test_dictionaries_inside_lists_structs_and_maps_count_what_they_expand_to(tmp_path, monkeypatch):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from studio.data.sources import read_file
    from studio.errors import StudioError

    rows, per_row, width = 2_000, 20, 2000  # 40,000 strings of 2,000 characters: 76 MB decoded per column
    values = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows * per_row, dtype=np.int32)), pa.array(["y" * width]))
    offsets = pa.array(np.arange(0, rows * per_row + 1, per_row, dtype=np.int32))
    keys = pa.array(np.char.add("k", np.arange(rows * per_row).astype(str)))
    columns = {
        "list": pa.ListArray.from_arrays(offsets, values),
        "struct": pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays([values], names=["text"])),
        "map": pa.MapArray.from_arrays(offsets, keys, values),
    }
    monkeypatch.setenv("STUDIO_MAX_DECODED_MB", "32")
    for kind, column in columns.items():
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"messages": column}), path)
        assert path.stat().st_size < 1 * MB, (kind, path.stat().st_size)
        with pytest.raises(StudioError, match=rf"{kind}\.parquet .*decoded.*over the limit of 32 MB"):
            read_file(path)


def test_the_large_file_path_refuses_the_bomb_before_datasets_writes_its_cache(tmp_path, monkeypatch):
    """A file over STUDIO_IN_MEMORY_MB goes to `datasets`' builder in the child (on a shared studio, within the
    limits): its Parquet is counted batch by batch first. Before, the dictionary batches passed that count and
    `datasets` wrote the whole expansion to its cache before the last check refused it."""
    import studio.data.sources as sources
    from studio.errors import StudioError

    bomb = _dictionary_bomb(tmp_path / "large-bomb.parquet", 150_000, 2000)
    monkeypatch.setattr(sources, "IN_MEMORY_BYTES", 1024)
    monkeypatch.setenv("STUDIO_SHARED", "1")
    monkeypatch.setenv("STUDIO_MAX_DECODED_MB", "64")
    with pytest.raises(StudioError, match=r"large-bomb\.parquet \([\d,.]+ MB decoded by row [\d,]+\)"):
        sources.read_file(bomb)


# ---- 4. honest dictionary files lose nothing ------------------------------------------------------------------
def test_an_honest_dictionary_file_reads_the_rows_of_its_plain_twin_mapped_not_copied(tmp_path):
    """pandas writes a categorical as a dictionary column, and pyarrow reads it back as one. Under the limit it
    reads the same rows as the same data written plain; the child hands it back decoded, so the caller maps
    it (before, `datasets` cast it to strings on the caller's Arrow heap: 114 MB here)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from studio.data import prepare_dataset
    from studio.data.sources import read_file

    labels = ["a long label " * 150 + str(i) for i in range(3)]  # ~2,000 characters each
    frame = pd.DataFrame({"text": [f"row {i}: some text" for i in range(60_000)],
                          "label": [labels[i % 3] for i in range(60_000)]})
    plain, categorical = tmp_path / "plain.parquet", tmp_path / "categorical.parquet"
    frame.to_parquet(plain)
    frame.astype({"label": "category"}).to_parquet(categorical)
    assert pa.types.is_dictionary(pq.ParquetFile(categorical).schema_arrow.field("label").type)
    read_file(_dictionary_bomb(tmp_path / "warm.parquet", 10, 10))  # imports and the helper, before measuring
    before = pa.total_allocated_bytes()  # Arrow's heap: RSS would hide a copy in pages freed by an earlier test
    raw = read_file(categorical)
    assert raw.dataset.data.nbytes > 100 * MB
    held = pa.total_allocated_bytes() - before
    assert held < 16 * MB, held / MB  # decoded on this side, the label column alone is 114 MB of Arrow heap
    twin = read_file(plain).dataset.data
    assert raw.dataset.column_names == twin.column_names and raw.dataset.data.num_rows == twin.num_rows == 60_000
    for name in twin.column_names:  # every value the same (the types may differ: string / large_string)
        assert raw.dataset.data.column(name).cast(pa.large_string()).equals(twin.column(name).cast(pa.large_string()))
    assert raw.dataset[59_999] == {"text": "row 59999: some text", "label": labels[59_999 % 3]}
    small = tmp_path / "small.parquet"  # and the whole prepare: the same rows and splits as the plain twin
    frame.head(300).astype({"label": "category"}).to_parquet(small)
    frame.head(300).to_parquet(tmp_path / "small-plain.parquet")
    a, b = prepare_dataset(str(small)), prepare_dataset(str(tmp_path / "small-plain.parquet"))
    assert {**a.summary(), "source": ""} == {**b.summary(), "source": ""}
    assert a.splits["train"].to_list() == b.splits["train"].to_list()
