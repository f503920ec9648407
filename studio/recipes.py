"""Recipes: YAML keyed by TRL's own field names, plus a small header of ours.

A recipe is three groups of keys in one flat file, as in the alignment-handbook:
  header   name, description, source_notebook, method, dataset, eval_prompts, export, studio
  model    TRL `ModelConfig` fields (model_name_or_path, lora_r, load_in_4bit, …)
  train    the method's TRL config fields (`SFTConfig`, `DPOConfig`, `GRPOConfig`: learning_rate, max_steps, …)
Validation builds the real TRL dataclasses, so a misspelt or removed key fails loudly.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studio.errors import StudioError, redact

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
HEADER_KEYS = ["name", "description", "source_notebook", "method", "init_adapter", "dataset", "eval_prompts", "export",
               "studio", "retrieval", "rewards", "reward_code"]
DATASET_KEYS = {"source", "format", "template", "config", "split", "splits", "max_length", "max_rows", "streaming",
                "group_by", "eval_source"}
STUDIO_KEYS = {"auto_batch", "max_micro_batch", "sample_max_new_tokens", "heldout_prompts",
               "split_across"}  # split_across: written by the studio, the processes the batch was split across
EXPORT_KEYS = {"hub_model_id", "private", "merge"}
# `retrieval:` (method lapdog): the story corpus, the retriever and LAPDOG's stage-2 settings
RETRIEVAL_KEYS = {"corpus", "embedder", "k", "tau_score", "tau_gold", "candidate_random", "query",
                  "retriever_learning_rate", "retriever_batch", "reply_max_new_tokens", "stage1_steps", "stage2_steps",
                  "story_side", "refresh_steps", "candidate_max_new_tokens", "signal"}
METHODS = ("sft", "dpo", "lapdog", "grpo")
_SECRET = re.compile(r"^hf_[A-Za-z0-9]{16,}$")


def _config_class(method: str):
    import trl

    return {"dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}.get(method, trl.SFTConfig)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value, f: dataclasses.Field, where: str):
    """YAML reads `2e-4` as a string and --set gives strings: convert to the field's type."""
    hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if isinstance(value, bool) and "bool" not in hint:
        return "no" if value is False else value  # YAML 1.1 reads `no` as False: eval_strategy: no
    if not isinstance(value, str):
        return value
    try:
        if re.match(r"^(float|Optional\[float\]|float \| None)", hint):
            return float(value)
        if re.match(r"^(int|Optional\[int\]|int \| None)", hint):
            return int(value)
        if hint.startswith("bool"):
            if value.lower() in {"true", "yes", "on", "1"}:
                return True
            if value.lower() in {"false", "no", "off", "0"}:
                return False
            raise ValueError(value)
    except ValueError:
        raise StudioError(f"{where}: '{f.name}' must be {hint.split(' ')[0]}, got {_short(value)}") from None
    return value


@dataclass
class Recipe:
    header: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def name(self) -> str:
        return self.header.get("name") or (Path(self.path).stem if self.path else "run")

    @property
    def method(self) -> str:
        return self.header.get("method", "sft")

    @property
    def dataset(self) -> dict:
        return self.header.get("dataset") or {}

    @property
    def studio(self) -> dict:
        return self.header.get("studio") or {}

    def to_dict(self) -> dict:
        out = {k: self.header[k] for k in HEADER_KEYS if k in self.header}
        out.update(self.model)
        out.update({k: v for k, v in self.train.items() if k not in ("output_dir", "hub_token")})
        return out

    def to_yaml(self) -> str:
        return redact(yaml.safe_dump(scrub(self.to_dict()), sort_keys=False, allow_unicode=True, width=100))

    def model_config(self):
        from trl import ModelConfig

        return ModelConfig(**self.model)

    def training_config(self, output_dir: str, adapt: bool = True, validate_only: bool = False):
        """The method's TRL config; with `adapt`, settings this machine can't run are switched off.

        Building a TrainingArguments resets accelerate's process-wide state, which kills a job that is
        training in another thread. `validate_only` reuses the configured state instead.
        """
        # pickled into checkpoints: HF_TOKEN only; mappings copied (transformers fills defaults into fsdp_config)
        values = {k: dict(v) if isinstance(v, dict) else v for k, v in self.train.items() if k != "hub_token"}
        notes = adapt_to_hardware(values) if adapt else []
        if validate_only:
            from accelerate.state import PartialState

            if PartialState._shared_state:
                values["accelerator_config"] = {"use_configured_state": True}
        cls = _config_class(self.method)
        # transformers 5 renamed gradient_checkpointing* to activation_checkpointing*; TRL still defaults the old
        # name to True, so a config that sets only the old one warns on every build. Pass the new name only.
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            value = values.pop(old, None)
            if values.get(new) is None:
                field = cls.__dataclass_fields__.get(old)
                fallback = field.default if field is not None and not callable(field.default) else None
                values[new] = value if value is not None else fallback
            if values.get(new) is None:
                values.pop(new, None)
        try:
            return cls(output_dir=str(output_dir), **values), notes
        except (ValueError, TypeError) as e:
            where = self.path or self.name
            raise StudioError(f"{where}: invalid training settings ({str(e).splitlines()[0]})") from None

    def set(self, key: str, value) -> None:
        """Set one key (dotted for header groups: dataset.source); validated like the file."""
        head, _, sub = key.partition(".")
        if sub:
            if head not in ("dataset", "export", "studio", "retrieval"):
                raise StudioError(f"--set {key}: only dataset.*, export.*, studio.* and retrieval.* take dotted keys")
            self.header.setdefault(head, {})
            self.header[head][sub] = value
        else:
            data = self.to_dict()
            data[key] = value
            fresh = recipe_from_dict(data, self.path or "--set")
            self.header, self.model, self.train = fresh.header, fresh.model, fresh.train
        validate(self)


def scrub(data):
    """Drop secrets: no token ever reaches a recipe file."""
    if isinstance(data, dict):
        return {k: scrub(v) for k, v in data.items() if k != "hub_token" and not (isinstance(v, str) and _SECRET.match(v))}
    if isinstance(data, list):
        return [scrub(v) for v in data]
    return data


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    from trl import ModelConfig

    if not isinstance(data, dict):
        raise StudioError(f"{where}: expected a mapping of keys to values")
    method = data.get("method", "sft")
    if method not in METHODS:
        raise StudioError(f"{where}: unknown method '{method}'; choose one of {', '.join(METHODS)}")
    model_fields, train_fields = _fields(ModelConfig), _fields(_config_class(method))
    recipe = Recipe(path=where if where.endswith((".yaml", ".yml")) else None)
    for key, value in data.items():
        if key in HEADER_KEYS:
            recipe.header[key] = value
        elif key in model_fields:
            recipe.model[key] = _coerce(value, model_fields[key], where)
        elif key in train_fields:
            if key == "output_dir":
                continue  # the studio owns the run folder
            recipe.train[key] = _coerce(value, train_fields[key], where)
        else:
            options = [*HEADER_KEYS, *model_fields, *train_fields]
            raise StudioError(f"{where}: unknown key '{key}'{_suggest(key, options)}")
    return recipe


MAX_STEPS = 10_000_000  # bounds a visitor can't exceed: past these a run is a mistake or an attack on the server
MAX_TOKENS = 1_048_576
MAX_RECIPE_BYTES = 1_000_000  # a recipe is a page of YAML
MAX_EVAL_PROMPTS, MAX_PROMPT_CHARS = 32, 4000  # generated before and after training, in the job's own thread
_MODULE_NAME = re.compile(r"all-linear|[A-Za-z_][A-Za-z0-9_.]{0,99}")


# Settings that can never train: checked before a job starts, so the user gets one line, not a failed run.
# key → (test, the allowed range in words)
RANGES = {
    "learning_rate": (lambda v: v > 0, "> 0"),
    "lora_r": (lambda v: v >= 1, "an integer ≥ 1"),
    "lora_alpha": (lambda v: v > 0, "> 0"),
    "lora_dropout": (lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
    "per_device_train_batch_size": (lambda v: v >= 1, "an integer ≥ 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "an integer ≥ 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "an integer ≥ 1"),
    "num_train_epochs": (lambda v: v > 0, "> 0"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (use epochs) or an integer ≥ 1"),
    "max_length": (lambda v: v >= 1, "an integer ≥ 1 (or unset)"),
    "warmup_steps": (lambda v: v >= 0, "≥ 0 (a ratio below 1, or a number of steps)"),
    "weight_decay": (lambda v: v >= 0, "≥ 0"),
    "max_grad_norm": (lambda v: v >= 0, "≥ 0"),
    "logging_steps": (lambda v: v > 0, "> 0"),
    "save_steps": (lambda v: v > 0, "> 0"),
    "eval_steps": (lambda v: v > 0, "> 0 (or unset)"),
    "save_total_limit": (lambda v: v >= 1, "an integer ≥ 1 (or unset)"),
    "seed": (lambda v: v >= 0, "an integer ≥ 0"),
    "beta": (lambda v: v > 0, "> 0"),
    "num_generations": (lambda v: v >= 2, "an integer ≥ 2 (a group needs two completions to compare)"),
    "max_completion_length": (lambda v: v >= 1, "an integer ≥ 1"),
    "temperature": (lambda v: v > 0, "> 0"),
    "dataset.max_length": (lambda v: v >= 1, "an integer ≥ 1"),
    "dataset.max_rows": (lambda v: v >= 1, "an integer ≥ 1"),
    "studio.max_micro_batch": (lambda v: v >= 1, "an integer ≥ 1"),
    "studio.sample_max_new_tokens": (lambda v: 1 <= v <= 4096, "from 1 to 4096"),
    "studio.heldout_prompts": (lambda v: 1 <= v <= 5000, "from 1 to 5000"),
    "retrieval.k": (lambda v: v >= 1, "an integer ≥ 1"),
    "retrieval.tau_score": (lambda v: v > 0, "> 0"),
    "retrieval.tau_gold": (lambda v: v > 0, "> 0"),
    "retrieval.candidate_random": (lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
    "retrieval.retriever_learning_rate": (lambda v: v > 0, "> 0"),
    "retrieval.retriever_batch": (lambda v: v >= 1, "an integer ≥ 1"),
    "retrieval.reply_max_new_tokens": (lambda v: 1 <= v <= 512, "from 1 to 512"),
    "retrieval.candidate_max_new_tokens": (lambda v: 1 <= v <= 512, "from 1 to 512 (unset: reply_max_new_tokens)"),
    "retrieval.stage1_steps": (lambda v: v >= 1, "an integer ≥ 1"),
    "retrieval.stage2_steps": (lambda v: v >= 1, "an integer ≥ 1"),
    "retrieval.refresh_steps": (lambda v: v >= 0, "an integer ≥ 0 (0: never)"),
}


# Upper bounds a visitor can't exceed: past these a setting is a mistake or an attack on the server's memory and time.
UPPER = {"learning_rate": 1, "lora_r": 4096, "lora_alpha": 65536, "per_device_train_batch_size": 4096,
         "per_device_eval_batch_size": 4096, "gradient_accumulation_steps": 65536, "num_train_epochs": 10_000,
         "max_steps": MAX_STEPS, "max_length": MAX_TOKENS, "warmup_steps": MAX_STEPS, "logging_steps": MAX_STEPS,
         "save_steps": MAX_STEPS, "eval_steps": MAX_STEPS, "seed": 2**32 - 1, "dataset.max_length": MAX_TOKENS,
         "dataset.max_rows": 10**9, "studio.max_micro_batch": 4096, "retrieval.k": 1000,
         "retrieval.stage1_steps": MAX_STEPS, "retrieval.stage2_steps": MAX_STEPS, "retrieval.retriever_batch": 4096,
         "retrieval.refresh_steps": MAX_STEPS, "num_generations": 256, "max_completion_length": MAX_TOKENS,
         "temperature": 100}


def check_ranges(recipe: "Recipe") -> None:
    where = recipe.path or recipe.name
    flat = {**recipe.model, **recipe.train}
    for group in ("dataset", "studio", "retrieval"):
        flat.update({f"{group}.{k}": v for k, v in (recipe.header.get(group) or {}).items()})
    for key, (ok, allowed) in RANGES.items():
        value = flat.get(key)
        if value is None:
            continue
        if isinstance(value, bool):
            raise StudioError(f"{where}: '{key}' must be a number ({allowed}), got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise StudioError(f"{where}: '{key}' must be a number ({allowed}), got {_short(value)}") from None
        if not math.isfinite(number):
            raise StudioError(f"{where}: '{key}' must be a finite number ({allowed}), got {value!r}")
        if key == "beta" and recipe.method == "grpo" and number == 0:
            continue  # GRPO's default: no KL term, no reference model
        if not ok(number):
            raise StudioError(f"{where}: '{key}' must be {allowed}, got {value!r}")
        if key in UPPER and number > UPPER[key]:
            raise StudioError(f"{where}: '{key}' must be at most {UPPER[key]:,}, got {_short(value)}")


# ---- scale-out and trackers: combinations that cannot work are refused here, in one line --------------------------
TRACKERS = ("trackio", "tensorboard", "wandb", "mlflow")  # TRL's report_to names the studio offers
LOCAL_TRACKERS = ("trackio", "tensorboard")  # write to this machine's disk only (Trackio without a Space)
FSDP_KEYS = {"version", "transformer_layer_cls_to_wrap", "auto_wrap_policy", "min_num_params", "cpu_offload",
             "reshard_after_forward", "state_dict_type", "activation_checkpointing", "cpu_ram_efficient_loading",
             "sync_module_states"}


def report_targets(value) -> list[str]:
    """report_to as TRL takes it (a name, "a,b" or a list) → the tracker names, 'none' dropped."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    return [n for n in (str(v).strip().lower() for v in items) if n and n != "none"]


def installed_trackers() -> list[str]:
    import importlib.util

    return [t for t in TRACKERS if importlib.util.find_spec(t) is not None]


def tracker_choices(shared: bool) -> list[str]:
    """The Train/DPO forms' report_to dropdown: none, then what is installed (on a shared app, local ones only)."""
    return ["none", *(t for t in installed_trackers() if not shared or t in LOCAL_TRACKERS)]


def check_scale_out(recipe: Recipe, where: str) -> None:
    train, model = recipe.train, recipe.model
    asked = train.get("report_to")
    named = asked if isinstance(asked, (list, tuple)) else str(asked).replace(",", " ").split()
    if report_targets(asked) and "none" in [str(v).strip().lower() for v in named]:
        raise StudioError(f"{where}: report_to: none means no tracker; pick none alone or only trackers")
    for name in report_targets(asked):
        if name not in TRACKERS:
            raise StudioError(f"{where}: report_to {_short(name, 40)} is not one of none, {', '.join(TRACKERS)}")
        if name not in installed_trackers():
            raise StudioError(f"{where}: report_to {name}: not installed here (pip install {name})")
    fsdp = train.get("fsdp")
    if not fsdp or str(fsdp).strip().lower() in ("false", "no", "none", "0"):
        return
    config = train.get("fsdp_config") or {}
    if not isinstance(config, dict):  # TRL also takes a JSON file's path: a recipe names no files on the server
        raise StudioError(f"{where}: fsdp_config must be a mapping of FSDP settings (version: 2, …)")
    config = {str(k).removeprefix("fsdp_"): v for k, v in config.items()}
    for key in config:
        if key not in FSDP_KEYS:
            raise StudioError(f"{where}: unknown key 'fsdp_config.{key}'{_suggest(key, FSDP_KEYS)}")
    if recipe.method != "sft":  # DPO's frozen reference copy and LAPDOG's retriever are not sharded (yet)
        raise StudioError(f"{where}: fsdp: the studio shards SFT runs; drop fsdp for method {recipe.method} "
                          "(it runs as data parallel under torchrun)")
    if train.get("deepspeed"):
        raise StudioError(f"{where}: fsdp and deepspeed are both set; shard with one of them")
    if str(config.get("version", 2)) != "2":
        raise StudioError(f"{where}: fsdp_config.version must be 2 (FSDP2; FSDP1 is deprecated in transformers)")
    if str(config.get("state_dict_type", "FULL_STATE_DICT")).split(".")[-1] != "FULL_STATE_DICT":
        raise StudioError(f"{where}: fsdp_config.state_dict_type must be FULL_STATE_DICT: the adapter is saved "
                          "whole, gathered on rank 0")
    if model.get("load_in_8bit"):
        raise StudioError(f"{where}: load_in_8bit can't be sharded by FSDP; use load_in_4bit (QLoRA) or neither")
    storage = model.get("bnb_4bit_quant_storage")
    if model.get("load_in_4bit") and storage not in (None, "bfloat16", "float16", "float32"):
        raise StudioError(f"{where}: bnb_4bit_quant_storage must be the compute dtype (bfloat16, float16 or "
                          f"float32) for FSDP to shard 4-bit weights, got {_short(storage, 40)}")
    if not model.get("use_peft"):
        raise StudioError(f"{where}: fsdp: the studio shards LoRA runs (use_peft: true)")


def validate(recipe: Recipe) -> Recipe:
    where = recipe.path or recipe.name
    for group, allowed in (("dataset", DATASET_KEYS), ("studio", STUDIO_KEYS), ("export", EXPORT_KEYS),
                           ("retrieval", RETRIEVAL_KEYS)):
        block = recipe.header.get(group) or {}
        if not isinstance(block, dict):
            raise StudioError(f"{where}: '{group}' must be a mapping")
        for key in block:
            if key not in allowed:
                raise StudioError(f"{where}: unknown key '{group}.{key}'{_suggest(key, allowed)}")
    retrieval = recipe.header.get("retrieval") or {}
    if retrieval.get("query", "persona") not in ("persona", "persona+turn"):
        raise StudioError(f"{where}: retrieval.query must be 'persona' or 'persona+turn', got {retrieval['query']!r}")
    if retrieval.get("signal", "metric") not in ("metric", "likelihood"):
        raise StudioError(f"{where}: retrieval.signal must be 'metric' or 'likelihood', got {retrieval['signal']!r}")
    if retrieval.get("story_side", "frozen") != "frozen":
        raise StudioError(f"{where}: retrieval.story_side: only 'frozen' (query encoder trained, story index fixed)")
    if not recipe.dataset.get("source"):
        raise StudioError(f"{where}: dataset.source is missing (a bundled sample, a file or a Hub id)")
    for key in ("source", "format", "template", "config", "split"):
        value = recipe.dataset.get(key)
        if value is not None and not isinstance(value, str):
            raise StudioError(f"{where}: dataset.{key} must be text, got {type(value).__name__}")
    if not recipe.model.get("model_name_or_path"):
        raise StudioError(f"{where}: model_name_or_path is missing")
    fmt = recipe.dataset.get("format")
    if fmt not in (None, "", "auto"):
        from studio.data.formats import FORMATS

        if fmt not in FORMATS:
            raise StudioError(f"{where}: dataset.format {_short(fmt, 60)} is not one of auto, {', '.join(FORMATS)}")
    targets = recipe.model.get("lora_target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if targets is not None and (not isinstance(names, list) or not all(
            isinstance(t, str) and _MODULE_NAME.fullmatch(t) for t in names)):
        # PEFT reads a single string as a regular expression: only 'all-linear' or plain module names
        raise StudioError(f"{where}: lora_target_modules must be 'all-linear' or module names like q_proj, "
                          f"got {_short(targets, 60)}")
    prompts = recipe.header.get("eval_prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise StudioError(f"{where}: eval_prompts must be a list of strings")
    if len(prompts) > MAX_EVAL_PROMPTS or any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise StudioError(f"{where}: eval_prompts: at most {MAX_EVAL_PROMPTS} prompts of at most "
                          f"{MAX_PROMPT_CHARS:,} characters each")
    if recipe.method == "grpo":
        from studio.rewards import check_rewards

        check_rewards(recipe.header.get("rewards"), where, recipe.header.get("reward_code"))
    elif recipe.header.get("rewards") or recipe.header.get("reward_code"):
        raise StudioError(f"{where}: rewards and reward_code are GRPO's settings; this recipe's method is "
                          f"{recipe.method}")
    code = recipe.header.get("reward_code")
    if code is not None and (not isinstance(code, str) or not code.endswith(".py")):
        raise StudioError(f"{where}: reward_code must be the path of a .py file of reward functions")
    check_ranges(recipe)
    check_scale_out(recipe, where)
    try:
        recipe.model_config()
    except (ValueError, TypeError) as e:
        raise StudioError(f"{where}: invalid model settings ({str(e).splitlines()[0]})") from None
    with tempfile.TemporaryDirectory() as tmp:
        recipe.training_config(tmp, validate_only=True)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = RECIPES_DIR / f"{path}.yaml"  # a bare name: recipes/NAME.yaml
    if not path.exists():
        raise StudioError(f"{path}: no such recipe file")
    data = parse_yaml(path)
    recipe = recipe_from_dict(data or {}, str(path))
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise StudioError(f"--set {item!r}: expected key=value")
        recipe.set(key.strip(), yaml.safe_load(value) if value.strip() else None)
    return validate(recipe)


class _RecipeLoader(yaml.SafeLoader):
    """YAML for recipes: safe types only, and no aliases (a few lines of anchors can expand to billions)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (*name) are not allowed in a recipe",
                                              event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(path: Path):
    """A recipe file's YAML, or one line naming the file (and line) and what is wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise StudioError(f"{path.name}: {size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}")
        text = path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise StudioError(f"{path.name}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise StudioError(f"{path.name}: can't read it ({e.strerror or type(e).__name__})") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{path} line {line + 1}" if line is not None else str(path)
        raise StudioError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:
        raise StudioError(f"{path}: nested too deeply to be a recipe") from None
    except ValueError as e:  # PyYAML's int(): a number of more than 4,300 digits
        raise StudioError(f"{path}: a value can't be read ({str(e).split(':')[0]})") from None


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def own_data(name: str, source) -> bool:
    """Whether `source` is the data the recipe `name` comes with (its file under recipes/ names it): False when
    a run swapped another dataset in (an upload, a Hub id, --set dataset.source=…). A recipe with no file
    there (made on the form) counts its data as its own."""
    path = RECIPES_DIR / f"{name}.yaml"
    try:
        data = parse_yaml(path) if path.is_file() else None
    except StudioError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("dataset"), dict):
        return True
    return str(data["dataset"].get("source") or "").strip() == str(source or "").strip()


def list_recipes(folder: Path = RECIPES_DIR) -> list[Recipe]:
    return [load_recipe(p) for p in sorted(folder.glob("*.yaml"))]


def adapt_to_hardware(values: dict) -> list[str]:
    """Switch off what this machine can't run, and say so. Mutates `values`."""
    import torch

    notes = []
    if not torch.cuda.is_available():
        values["use_cpu"] = True
        for key in ("bf16", "fp16"):
            if values.get(key):
                notes.append(f"{key} off: no GPU, training in fp32 on the CPU")
            # Always explicit: TRL's configs turn an unset bf16 on, and bf16 autocast on a CPU
            # without bf16 units runs ~10× slower than fp32.
            values[key] = False
        if values.get("tf32"):
            values["tf32"] = None
        optim = str(values.get("optim", ""))
        if "paged" in optim or "8bit" in optim or "bnb" in optim:
            values["optim"] = "adamw_torch"
            notes.append(f"optim {optim} → adamw_torch: bitsandbytes optimizers need a GPU")
        if values.get("use_liger_kernel"):
            values["use_liger_kernel"] = False
            notes.append("use_liger_kernel off: Liger kernels need a GPU")
    elif values.get("bf16") and not torch.cuda.is_bf16_supported():
        values["bf16"], values["fp16"] = False, True
        notes.append("bf16 → fp16: this GPU has no bf16")
    return notes



def recipe_to_flat(recipe: Recipe) -> dict:
    """Recipe → flat keys (dataset.source, lora_r, …), the shape a form edits."""
    flat = {k: v for k, v in recipe.to_dict().items() if k not in ("dataset", "studio", "export")}
    for group in ("dataset", "studio", "export"):
        for k, v in (recipe.header.get(group) or {}).items():
            flat[f"{group}.{k}"] = v
    return flat


def check_visitor_trackers(flat: dict, where: str = "form") -> None:
    """On a shared app the page and its API may report only to this machine's disk: W&B and MLflow (and Trackio's
    Space or bucket sync) would send a visitor's run off the server under the owner's credentials. The owner's
    own recipe files and CLI are not visitors' and may name any tracker."""
    from studio.access import shared_mode

    if not shared_mode():
        return
    for name in report_targets(flat.get("report_to")):
        if name not in LOCAL_TRACKERS:
            raise StudioError(f"{where}: report_to {_short(name, 40)} sends the run off this server; on a shared "
                              f"app the page offers {', '.join(LOCAL_TRACKERS)} (local files) or none")
    for key in ("trackio_space_id", "trackio_bucket_id", "trackio_static_space_id"):
        if flat.get(key):
            raise StudioError(f"{where}: {key} publishes from the server; on a shared app only its owner sets it")
    if "trackio" in report_targets(flat.get("report_to")) and os.environ.get("TRACKIO_SPACE_ID"):
        raise StudioError(f"{where}: this app's Trackio syncs to a Space (TRACKIO_SPACE_ID); on a shared app "
                          "the page offers tensorboard or none")


def recipe_from_flat(flat: dict, where: str = "form") -> Recipe:
    """Flat keys → a validated Recipe; empty values mean 'not set'.

    This is what the page and its API send: remote code stays off unless the app's owner allowed it,
    and the recipe's name must be a plain run name (it becomes a folder under runs/).
    """
    from studio.access import check_remote_code, check_run_name

    from studio.access import check_data_source, check_model_source

    check_remote_code(flat.get("trust_remote_code"), where)
    from studio.rewards import check_reward_code

    check_reward_code(flat.get("reward_code"), where)
    check_visitor_trackers(flat, where)
    if flat.get("name"):
        check_run_name(flat["name"], "recipe name")
    check_data_source(flat.get("dataset.source") or "")
    # held-out data is read like the training data (a split name such as `validation` passes as a bare name)
    check_data_source(flat.get("dataset.eval_source") or "")
    check_model_source(flat.get("model_name_or_path") or "")
    retrieval = flat.get("retrieval")
    if isinstance(retrieval, dict):  # lapdog: the story corpus and the embedder are read like data and models
        from studio.retrieval import check_embedder_source

        check_data_source(retrieval.get("corpus") or "")
        check_embedder_source(retrieval.get("embedder") or "")
    data: dict = {}
    for key, value in flat.items():
        if value is None or value == "":
            continue
        head, _, sub = key.partition(".")
        if sub:
            data.setdefault(head, {})[sub] = value
        else:
            data[key] = value
    return validate(recipe_from_dict(data, where))
