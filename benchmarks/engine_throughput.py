"""Rollout throughput of the harness sampler (its growing KV cache, the opt-in preallocated one, and
the lean decode step the local engine uses) vs a bare ``model.generate``, and step time per phase.

    python benchmarks/engine_throughput.py                # S model, 64 × 40 tokens, 1 thread
    python benchmarks/engine_throughput.py --run-dir DIR  # phase shares of an existing run

Both samplers draw from the full softmax at temperature 1 on the same model and prompts and stop a
row at its end token (the random-init model ends a row with probability 1/17 per token, so lengths
vary as in a real rollout); tokens/s counts response tokens up to and including the end token.
The harness sampler also records μ's log-prob and top-K per token (an inference engine's work) and
drops finished rows from the batch; ``generate`` keeps computing them until every row is done.
Rounds alternate the samplers, medians are reported. Targets: harness / generate tokens/s ≥ 1.0;
preallocated / growing cache ≥ 1.0 (the same samples, bitwise: tests/harness/test_rollout.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sampler_throughput(batch: int, new_tokens: int, rounds: int, hidden: int, layers: int, mlp: int):
    import torch

    from harness.model import CharTokenizer, ModelSize, build_model
    from harness.tasks.addition import ALPHABET
    from harness.rollout import sample

    tok = CharTokenizer(ALPHABET)
    model = build_model(ModelSize(hidden, layers, mlp), tok.vocab_size, 128, seed=0).eval()
    prompts = torch.randint(3, tok.vocab_size, (batch, 8), generator=torch.Generator().manual_seed(0))
    def harness(preallocate=False, lean=False):
        roll = sample(model, prompts, new_tokens, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(1),
                      record_top_k=min(20, tok.vocab_size), preallocate=preallocate, lean=lean)
        return int(roll.response_mask.sum())

    def generate():
        torch.manual_seed(1)
        with torch.no_grad():
            out = model.generate(prompts, do_sample=True, max_new_tokens=new_tokens, temperature=1.0, top_k=0,
                                 top_p=1.0, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        response = out[:, prompts.shape[1]:]
        ended = (response == tok.eos_id).int()
        after_end = (ended.cumsum(1) - ended) > 0  # positions after a row's end token are padding
        return int((~after_end).sum())

    times = {"harness": [], "preallocated": [], "lean": [], "generate": []}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, fn in (("harness", harness), ("preallocated", lambda: harness(preallocate=True)),
                         ("lean", lambda: harness(lean=True)), ("generate", generate)):
            start = time.perf_counter()
            tokens = fn()
            if round_:
                times[name].append(tokens / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}


def phase_shares(run_dir: Path) -> dict:
    from harness.store import RunStore

    rows = RunStore(run_dir).read_metrics()
    totals = {k: sum(r.get(k, 0.0) for r in rows) for k in ("time_rollout", "time_update", "time_eval")}
    whole = sum(totals.values()) or 1.0
    steps = max(r["step"] for r in rows)
    return {"steps": steps, **{k: v / whole for k, v in totals.items()}, "seconds_per_step": whole / max(steps, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", choices=["s", "m"], default="s")
    parser.add_argument("--run-dir", type=Path, help="report the phase shares of this run folder")
    parser.add_argument("--phase-steps", type=int, default=10, help="steps of the base_s run timed for phases")
    parser.add_argument("--skip-phases", action="store_true", help="the sampler rows only")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    sizes = {"s": (128, 4, 512), "m": (192, 6, 768)}[args.model]
    tps = sampler_throughput(args.batch, args.new_tokens, args.rounds, *sizes)
    print(f"rollout, model {args.model.upper()}, {args.batch} × {args.new_tokens} tokens, {args.threads} thread(s), "
          f"median of {args.rounds} alternating rounds")
    print(f"  harness sampler (records μ log-prob + top-K): {tps['harness']:>9.0f} tokens/s")
    print(f"  the same, preallocated KV cache:              {tps['preallocated']:>9.0f} tokens/s")
    print(f"  the same, lean decode step (local engine):    {tps['lean']:>9.0f} tokens/s")
    print(f"  model.generate (bare):                        {tps['generate']:>9.0f} tokens/s")
    ratio = tps["harness"] / tps["generate"]
    print(f"  ratio harness / generate: {ratio:.2f}   target ≥ 1.0  {'ok' if ratio >= 1.0 else 'MISSED'}")
    grow = tps["preallocated"] / tps["harness"]
    print(f"  ratio preallocated / growing cache: {grow:.2f}   target ≥ 1.0  {'ok' if grow >= 1.0 else 'MISSED'}")
    print(f"  ratio lean / model forward: {tps['lean'] / tps['harness']:.2f}; lean / generate: "
          f"{tps['lean'] / tps['generate']:.2f}")
    if args.skip_phases:
        return 0

    run_dir = args.run_dir
    if run_dir is None:
        import tempfile

        from harness.config import compose
        from harness.train import run
        run_dir = Path(tempfile.mkdtemp()) / "phases"
        run(compose(["setting=base_s", f"setting.steps={args.phase_steps}", f"setting.t_stop={args.phase_steps}",
                     "logging=quiet", f"engine.threads={args.threads}", f"run_dir={run_dir}"]))
    shares = phase_shares(run_dir)
    print(f"step time per phase ({run_dir}, {shares['steps']} steps, {shares['seconds_per_step']:.2f} s/step):")
    for key in ("time_rollout", "time_update", "time_eval"):
        print(f"  {key[5:]:<8} {100 * shares[key]:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
