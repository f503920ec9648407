"""Saved results: runs/<run>/eval/<name>.json (or runs/evals/), listed, loaded, and exported as CSV + JSON.

On a shared studio a visitor's results live in the visitor's own folder (studio.access.visitor_folder:
<runs>/.visitors/<mark>/results/<run>/<name>.json), never inside the owner's run, and are listed back to that
visitor alone. Every result is named by its handle, RUN/NAME (or evals/NAME), never by a path."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

from studio.errors import StudioError


def result_path(owner: str, name: str) -> Path:
    """runs/<run>/eval/<name>.json, or runs/evals/<name>.json for an evaluation without a run; on a shared studio
    a visitor's own copy of either lies in their own folder."""
    from studio.access import check_run_name, runs_root, visitor_folder

    owner, name = check_run_name(owner, "run"), check_run_name(name, "result name")
    mine = visitor_folder()
    if mine is not None:
        return mine / "results" / owner / f"{name}.json"
    root = runs_root()
    return root / "evals" / f"{name}.json" if owner == "evals" else root / owner / "eval" / f"{name}.json"


def save_result(result: dict) -> Path:
    from studio.access import claim, require_write

    if result["owner"] != "evals":
        from studio.access import resolve_run

        resolve_run(result["owner"])  # results of a run the visitor may read, and only such
    path = result_path(result["owner"], result["name"])
    require_write(path, f"result {result['owner']}/{result['name']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    claim(path)
    body = {k: v for k, v in result.items() if k != "path"}
    path.write_text(json.dumps(body, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _owner_layout(root: Path) -> list[Path]:
    return [*root.glob("*/eval/*.json"), *root.glob("evals/*.json")]


def list_results() -> list[str]:
    """Saved results as "owner/name", newest first: the visitor's own, then the owner's (unmarked) ones."""
    from studio.access import may_read, runs_root, visitor_folder

    found: dict[str, Path] = {}
    mine = visitor_folder()
    if mine is not None:
        for p in (mine / "results").glob("*/*.json"):
            found[f"{p.parent.name}/{p.stem}"] = p
    for p in _owner_layout(runs_root()):
        if may_read(p) and (p.parent.name == "evals" or may_read(p.parent.parent)):
            found.setdefault(f"{'evals' if p.parent.name == 'evals' else p.parent.parent.name}/{p.stem}", p)
    return sorted(found, key=lambda ref: found[ref].stat().st_mtime, reverse=True)


def load_result(ref: str) -> dict:
    owner, _, name = str(ref or "").strip().partition("/")
    if not name:
        raise StudioError(f"{ref!r}: name a saved result as RUN/NAME (see the list)")
    from studio.access import check_run_name, require_read, resolve_run, runs_root, visitor_folder

    owner, name = check_run_name(owner, "run"), check_run_name(name, "result name")
    root = runs_root()
    path = result_path(owner, name)  # the visitor's own first (shared), else the owner's layout
    if visitor_folder() is not None and not path.is_file():
        path = root / "evals" / f"{name}.json" if owner == "evals" else root / owner / "eval" / f"{name}.json"
    if not path.is_file():
        raise StudioError(f"{ref}: no such saved result")
    if owner != "evals":
        resolve_run(owner)  # a run's results go with the run
    require_read(path, f"result {ref}")
    return read_result(path)


def read_result(path: Path) -> dict:
    """One saved result as `save_result` wrote it (with its "path"): the one reader of the file format."""
    result = json.loads(Path(path).read_text("utf-8"))
    result["path"] = str(path)
    return result


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """A CSV cell a spreadsheet shows as text (OWASP's CSV injection rule): text starting with =, +, -, @, tab or
    CR gets a leading '. Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def run_results(run_dir: Path) -> list[dict]:
    """Every result saved with the run folder `run_dir` (its eval/ folder), oldest first; files that are not
    saved results (unreadable, or without metrics) are skipped. The caller has checked access to the run."""
    found = []
    for path in sorted(Path(run_dir, "eval").glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            result = read_result(path)
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("metrics"), dict) and result.get("labels"):
            found.append(result)
    return found


def export_metrics(result: dict, folder: str | Path) -> Path:
    """The summary as CSV: one line per model, one column per metric (the rows CSV holds the rows)."""
    path = Path(folder) / f"{result['name']}-metrics.csv"
    keys = list(dict.fromkeys(k for m in result["metrics"].values() for k in m))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", *keys])
        for label, m in result["metrics"].items():
            w.writerow([safe_cell(label), *[m.get(k) if m.get(k) is None else round(m[k], 4) for k in keys]])
    return path


def export_result(result: dict, folder: str | Path | None = None) -> tuple[Path, Path]:
    """(CSV, JSON) copies in a temp folder: one CSV line per row with each model's output and score; beside
    them `<name>-metrics.csv`, the summary (`export_metrics`)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="studio-eval-"))
    folder.mkdir(parents=True, exist_ok=True)
    labels, key = result["labels"], result.get("score_key")
    json_path = folder / f"{result['name']}.json"
    json_path.write_text(json.dumps({k: v for k, v in result.items() if k != "path"}, ensure_ascii=False, indent=1),
                         encoding="utf-8")
    csv_path = folder / f"{result['name']}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        header = ["id", "prompt", "reference", *labels, *([f"{lab} {key}" for lab in labels] + ["delta"] if key else [])]
        w.writerow([safe_cell(c) for c in header])
        for row in result["rows"]:
            outs = [o if isinstance(o, str) else "\n— next turn —\n".join(o) for o in row["outputs"].values()]
            scores = [round(row["scores"][lab][key], 2) for lab in labels] + [round(row["delta"], 2)] if key else []
            w.writerow([safe_cell(c) for c in (row["id"], row["prompt"], row["reference"], *outs, *scores)])
    if result.get("metrics"):  # the summary, beside the rows
        export_metrics(result, folder)
    return csv_path, json_path
