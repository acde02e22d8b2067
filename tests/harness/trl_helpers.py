"""A tiny TRL engine trainer for the tests: random Qwen3 (or a model given), a character tokenizer,
the fixture problems and a reward with variance even for a random model."""

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from harness.lm import load_lm  # noqa: E402
from harness.runconfig import TinyLM  # noqa: E402
from harness.tasks import make_task  # noqa: E402
from harness.tasks.math import MathConfig, load_problems  # noqa: E402
from harness.engines.trl_trainer import make_trainer_class  # noqa: E402
from methods import get_method  # noqa: E402

TINY = TinyLM(hidden=32, layers=2, mlp=64, heads=2, kv_heads=1, max_positions=512)
HORIZON = 16


def digit_share(prompts, completions, **_):
    """A shaped reward with variance even for a random model (math-verify would give all zeros)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def make_trainer(tmp_path, method_name, steps=4, model=None, trl_options=None, **method_params):
    """A RegistryGRPOTrainer: 8 rows per device, 2 optimiser steps per generation, no accumulation."""
    tiny, tok = load_lm(TINY, seed=0)
    problems = load_problems("fixture:fixture_dapo_math")
    math = make_task(MathConfig())
    data = Dataset.from_list([{"prompt": math.messages(p), "answer": p.answer} for p in problems])
    options = dict(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                   steps_per_generation=2, num_generations=4, max_completion_length=HORIZON, learning_rate=1e-2,
                   max_steps=steps, logging_steps=1, report_to="none", use_cpu=True, bf16=False,
                   activation_checkpointing=False, beta=0.0, scale_rewards="none", save_strategy="no",
                   remove_unused_columns=False, seed=0, disable_tqdm=True, lr_scheduler_type="constant",
                   vllm_importance_sampling_correction=False)
    options.update(trl_options or {})
    method = get_method(method_name, horizon=HORIZON, **method_params)
    top_k = getattr(method.params, "top_k", 1) or 1
    cls = make_trainer_class()
    return cls(model=model if model is not None else tiny, processing_class=tok, reward_funcs=[digit_share],
               args=GRPOConfig(**options), train_dataset=data, method=method, top_k=top_k)
