"""The house's import graph, read with `ast` (function-level imports included): no circle anywhere in
studio/, only the modules that run jobs import studio.jobs, evaluation imports nothing from studio.train,
and nothing outside studio/ui imports gradio."""

import ast
from pathlib import Path

import pytest

STUDIO = Path(__file__).resolve().parent.parent / "studio"
# the modules that start, watch or stop training jobs (readers of runs import studio.runs instead; training
# paths report through studio.train.progress, and an import of jobs from train would close a circle)
JOB_RUNNERS = {"studio.jobs", "studio.cli", "studio.ui.train_tab", "studio.ui.dpo_tab"}


def module_name(path: Path) -> str:
    parts = path.relative_to(STUDIO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> set[str]:
    """Every module `path` imports, anywhere in it (`from studio import jobs` counts as studio.jobs)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in STUDIO.rglob("*.py")}
    return {name: imported(path, name) for name, path in mods.items()}


def studio_edges(graph):
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checker_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_studio(graph):
    cycle = find_cycle(studio_edges(graph))
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_only_job_runners_import_jobs(graph):
    readers = sorted(m for m, targets in graph.items() if "studio.jobs" in targets and m not in JOB_RUNNERS)
    assert readers == [], f"{readers} import studio.jobs; readers of runs import studio.runs"


def test_evaluation_imports_nothing_from_train(graph):
    bad = sorted(m for m, targets in graph.items() if m.startswith("studio.evaluate")
                 and any(t == "studio.train" or t.startswith("studio.train.") for t in targets))
    assert bad == [], f"{bad} import studio.train; shared helpers live in studio.pairs / metrics / persona"


def test_gradio_only_under_ui(graph):
    bad = sorted(m for m, targets in graph.items() if not m.startswith("studio.ui")
                 and any(t == "gradio" or t.startswith("gradio.") for t in targets))
    assert bad == [], f"{bad} import gradio outside studio/ui"


def test_readme_layout_names_every_module():
    """The Layout section of docs/architecture.md and the package agree: every module is named there, and nothing more."""
    import re

    text = (STUDIO.parent / "docs" / "architecture.md").read_text("utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in section.splitlines():
        if not line.startswith("- `studio/"):
            continue
        folder = re.match(r"- `(studio/(?:\w+/)?)`", line)
        for name in re.findall(r"`([\w/]+\.py)`", line):
            path = name if name.startswith("studio/") else (folder.group(1) if folder else "studio/") + name
            named.add(path)
    actual = {str(p.relative_to(STUDIO.parent)) for p in STUDIO.rglob("*.py")}
    assert sorted(actual - named) == [], "modules missing from the Layout section of docs/architecture.md"
    assert sorted(named - actual) == [], "the Layout section of docs/architecture.md names modules that do not exist"
