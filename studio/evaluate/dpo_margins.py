"""A DPO run's preference report: reward and log-probability margins on its own held-out pairs."""

from __future__ import annotations

from studio.errors import StudioError


def dpo_report(run: str, limit: int = 32) -> dict:
    """A DPO run on its own held-out pairs (test split, else validation): how often the policy's implicit
    reward prefers `chosen` (reward margin β·(policy − reference) > 0), the mean reward margin, and the
    policy's and the reference's mean log-probability margins. The reference is what the run trained
    against (its SFT start, or the base)."""
    import statistics

    from studio.access import resolve_run
    from studio.metrics import preference_margins
    from studio.pairs import load_pairs
    from studio.recipes import load_recipe
    from studio.work import heavy

    run_dir = resolve_run(run)
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.method != "dpo":
        raise StudioError(f"{run_dir.name} is a {recipe.method} run: the preference report needs a DPO run")
    from studio.data import heldout_data

    seed = int(recipe.train.get("seed", 42))
    held = heldout_data(recipe.dataset, seed)  # dataset.eval_source replaces the random held-out split
    data = held or load_pairs(recipe, seed=seed)
    split = next((s for s in ("test", "validation") if s in data.splits and len(data.splits[s])), None)
    if split is None:
        raise StudioError(f"{run_dir.name}: its dataset has no held-out pairs (too few rows for a test split)")
    part = data.splits[split]
    # scoring the pairs with the policy and its reference is heavy work (studio.work): queued, billed, stopped
    table = heavy("evaluation", preference_margins, str(run_dir),
                  part.select(range(min(int(limit), len(part)))).to_list())
    mean = lambda key: round(statistics.fmean(r[key] for r in table), 4)  # noqa: E731
    return {"run": run_dir.name, "split": "eval_source" if held else split, "pairs": len(table),
            "preference_accuracy": round(100 * sum(r["reward_margin"] > 0 for r in table) / len(table), 2),
            "mean_reward_margin": mean("reward_margin"), "policy_logp_margin": mean("policy_margin"),
            "reference_logp_margin": mean("reference_margin"), "rows": table}
