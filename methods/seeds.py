"""The project's one seed helper: every random stream takes its generator seed from ``derive_seed``.

A stream is named (``STREAMS``) and keyed by a fixed tuple of non-negative integers, e.g. a run's
rollout at a step is ``derive_seed("rollout", seed, step)``. The name and the key are hashed by
numpy's ``SeedSequence`` — built for turning structured integer keys into independent, well-mixed
seeds — so two different (stream, key) pairs share a seed only by a 2⁻⁶³ accident, unlike linear
formulas such as ``seed * 7 + step`` (where seed 0 at step 7 replays seed 1 at step 0).

It lives in ``methods`` (the bottom layer, which imports nothing of ours) so that every package —
the shuffled position weights here, the engines, the warm-up, the scripts — can use the same one.
"""

from __future__ import annotations

import zlib

import numpy as np

# stream name → what each integer of its key is
STREAMS: dict[str, tuple[str, ...]] = {
    "model_init": ("seed",),                          # weights of a freshly built model
    "warmup_batch": ("seed", "step"),                 # the supervised warm-up's problems at a step
    "warmup_probe": ("seed",),                        # the warm-up's fixed probe problems
    "warmup_probe_sampling": ("seed", "step"),        # sampling when the warm-up probes its accuracy
    "problems": ("seed", "step"),                     # a run's training prompts at an RL step
    "rollout": ("seed", "step"),                      # sampling the rollout of an RL step (local engine)
    "evaluation": ("seed", "split_group"),            # evaluation noise: 0 validation, 1 test (every step)
    "trl_rollout": ("seed", "generation", "process"),  # the TRL engine's harness-sampler generations
    "trl_evaluation": ("seed", "split", "chunk"),     # the TRL engine's evaluation batches (every step)
    "trl_train_problems": ("seed",),                  # a procedural task's training set on the TRL engine
    "shuffled_weights": ("shuffle_seed", "sequence_id"),  # CPPO's shuffled-weights ablation, per response
    "eval_noise_probe": ("replicate",),               # scripts/eval_noise.py's independent evaluations
}
_LIMIT = 2**32
_STREAM_IDS = {name: zlib.crc32(name.encode()) for name in STREAMS}
assert len(set(_STREAM_IDS.values())) == len(STREAMS), "two stream names hash alike"


def derive_seed(stream: str, *key: int) -> int:
    """The 63-bit generator seed of ``stream`` at ``key`` (one integer per name in ``STREAMS[stream]``,
    each in [0, 2**32))."""
    names = STREAMS.get(stream)
    if names is None:
        raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}")
    if len(key) != len(names):
        raise ValueError(f"stream {stream!r} is keyed by ({', '.join(names)}), got {len(key)} value(s) {key}")
    for name, value in zip(names, key):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < _LIMIT:
            raise ValueError(f"stream {stream!r}: {name} must be an integer in [0, 2**32), got {value!r}")
    words = np.random.SeedSequence([_STREAM_IDS[stream], *map(int, key)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])  # 63 bits: any torch/numpy/random generator accepts it
