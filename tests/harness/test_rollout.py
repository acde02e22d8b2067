"""The sampler records μ exactly as a teacher-forced forward sees it."""

import pytest
import torch

from harness.tasks.addition import ALPHABET as ADDITION
from harness.model import CharTokenizer, ModelSize, build_model
from harness.rollout import response_logits, sample


def test_recorded_logprobs_match_teacher_forcing_and_topk_holds_the_sampled_token():
    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    prompts = torch.tensor([[tok.bos_id] + tok.encode("12+34=")] * 6)
    roll = sample(model, prompts, 20, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), record_top_k=3)
    with torch.no_grad():
        logp_full = response_logits(model, prompts, roll.response_ids).log_softmax(-1)
    teacher = logp_full.gather(-1, roll.response_ids[..., None]).squeeze(-1)
    valid = roll.response_mask
    assert roll.finished.any() and not roll.finished.all()  # rows left the batch at different steps
    assert valid.any() and (teacher[valid] - roll.rollout_logp[valid]).abs().max() <= 1e-5
    # top-3 of μ, with the sampled token forced in when it is not among them
    assert bool((roll.rollout_topk_ids == roll.response_ids[..., None]).any(-1)[valid].all())
    recorded = logp_full.gather(-1, roll.rollout_topk_ids)
    assert (recorded - roll.rollout_topk_logp)[valid].abs().max() <= 1e-5
    # the response mask ends at (and includes) the end token; padding after it
    for row in range(6):
        n = int(valid[row].sum())
        if roll.finished[row]:
            assert roll.response_ids[row, n - 1] == tok.eos_id
        assert bool((roll.response_ids[row, n:] == tok.pad_id).all())


def test_sampling_is_deterministic_in_the_generator():
    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    prompts = torch.tensor([[tok.bos_id] + tok.encode("12+34=")] * 4)
    a = sample(model, prompts, 10, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(3), record_top_k=4)
    b = sample(model, prompts, 10, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(3), record_top_k=4)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.rollout_logp, b.rollout_logp)


@pytest.mark.parametrize("left_padded", [False, True])
def test_shared_prefix_gives_the_full_forward_logits_with_gradients(left_padded):
    """Each group's prompt is run once and its KV cache shared by the group's responses."""
    from harness.model import ModelSize, build_model
    from harness.rollout import response_logits, shared_prefix_hidden

    model = build_model(ModelSize(64, 2, 128, 4, 2), 17, 64, seed=0)
    group, groups = 3, 4
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 17, (groups, 7), generator=gen).repeat_interleave(group, 0)
    responses = torch.randint(0, 17, (groups * group, 9), generator=gen)
    mask = torch.ones_like(prompts)
    if left_padded:
        mask[:group, :3] = 0
        prompts[:group, :3] = 0

    def full():
        if not left_padded:
            return response_logits(model, prompts, responses)
        att = torch.cat([mask, torch.ones_like(responses)], 1)
        pos = (att.cumsum(-1) - 1).clamp_min(0)
        return model(input_ids=torch.cat([prompts, responses], 1), attention_mask=att, position_ids=pos).logits[:, 6:-1]

    grads = []
    def shared():
        hidden = shared_prefix_hidden(model, prompts, responses, group, prompt_mask=mask if left_padded else None)
        return model.get_output_embeddings()(hidden)

    for logits_fn in (full, shared):
        model.zero_grad()
        logits = logits_fn()
        logits.log_softmax(-1)[..., 5].sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (la, ga), (lb, gb) = grads
    assert la.shape == lb.shape == (groups * group, 9, 17)
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)


def _gumbel(n, t, v, seed):
    return -torch.empty(n, t, v).exponential_(generator=torch.Generator().manual_seed(seed)).log()


def test_gumbel_noise_belongs_to_its_row_whatever_else_is_in_the_batch():
    """Common random numbers: a row's sample depends on its own noise only, so evaluating a subset of
    the rows (or other rows beside them) gives the same responses; rows still leave the batch."""
    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    prompts = torch.tensor([[tok.bos_id] + tok.encode(p) for p in ("12+34=", "56+78=", "90+11=", "23+45=")] * 2)
    noise = _gumbel(8, 20, tok.vocab_size, seed=5)
    gen = torch.Generator().manual_seed(0)
    full = sample(model, prompts, 20, tok.eos_id, tok.pad_id, gen, temperature=0.7, top_p=0.95, gumbel=noise)
    assert full.finished.any() and not full.finished.all()
    rows = torch.tensor([1, 4, 6])
    part = sample(model, prompts[rows], 20, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(9),
                  temperature=0.7, top_p=0.95, gumbel=noise[rows])
    width = part.response_ids.shape[1]
    assert torch.equal(part.response_ids, full.response_ids[rows, :width])
    assert bool((full.response_ids[rows, width:] == tok.pad_id).all())


def test_gumbel_max_draws_from_the_nucleus_distribution():
    """argmax(log p + Gumbel) is an exact draw from p (here p after temperature and top-p)."""
    from harness.rollout import _nucleus

    torch.manual_seed(0)
    logits = torch.randn(1, 17) * 2
    logp = _nucleus((logits / 0.7).log_softmax(-1), 0.95)[0]
    draws = (logp + _gumbel(1, 40000, 17, seed=1)[0]).argmax(-1)
    freq = torch.bincount(draws, minlength=17).double() / 40000
    assert (freq - logp.exp().double()).abs().max() < 0.01
    assert float(freq[logp == float("-inf")].sum()) == 0.0  # nothing outside the nucleus


@pytest.mark.parametrize("left_padded", [False, True])
def test_the_preallocated_cache_gives_the_same_samples(left_padded):
    """Bitwise the same tokens, μ log-probs and top-K as the growing cache, while rows leave the batch
    at different steps (and with left-padded prompts of different lengths)."""
    from harness.rollout import left_pad

    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    texts = ["12+34=", "5+6=", "123+4=", "7+80="] * 3
    rows = [[tok.bos_id] + tok.encode(t if left_padded else "12+34=") for t in texts]
    prompts, mask = left_pad(rows, tok.pad_id)
    runs = [sample(model, prompts, 24, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(5), record_top_k=4,
                   prompt_mask=mask if left_padded else None, preallocate=pre) for pre in (False, True)]
    assert runs[0].finished.any() and not runs[0].finished.all()
    for key in ("response_ids", "response_mask", "finished", "rollout_logp", "rollout_topk_ids", "rollout_topk_logp"):
        assert torch.equal(getattr(runs[0], key), getattr(runs[1], key)), key


@pytest.mark.parametrize("preallocate", [False, True])
@pytest.mark.parametrize("left_padded", [False, True])
def test_a_group_shares_its_prompt_pass_and_samples_the_same(left_padded, preallocate):
    """``group``: each prompt runs once and its cache is copied to the group's rows — the same tokens
    as running every row, μ's log-probs and top-K equal up to rounding, rows still leave the batch."""
    from harness.rollout import left_pad

    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    group = 3
    texts = [t for t in ("12+34=", "5+6=", "123+4=", "7+80=") for _ in range(group)]
    rows = [[tok.bos_id] + tok.encode(t if left_padded else "12+34=") for t in texts]
    prompts, mask = left_pad(rows, tok.pad_id)
    runs = [sample(model, prompts, 24, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(5), record_top_k=4,
                   prompt_mask=mask if left_padded else None, preallocate=preallocate, group=g) for g in (1, group)]
    assert runs[0].finished.any() and not runs[0].finished.all()
    for key in ("response_ids", "response_mask", "finished", "rollout_topk_ids"):
        assert torch.equal(getattr(runs[0], key), getattr(runs[1], key)), key
    for key in ("rollout_logp", "rollout_topk_logp"):
        torch.testing.assert_close(getattr(runs[1], key), getattr(runs[0], key), atol=1e-5, rtol=1e-5)


def test_a_group_must_share_its_prompt():
    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    prompts = torch.tensor([[tok.bos_id] + tok.encode(t) for t in ("12+34=", "56+78=")])
    with pytest.raises(ValueError, match="share one prompt"):
        sample(model, prompts, 4, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), group=2)
    with pytest.raises(ValueError, match="group must divide"):
        sample(model, prompts, 4, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), group=3)


def test_hidden_states_times_the_output_layer_are_the_logits():
    """``response_hidden``/``shared_prefix_hidden`` are the states the logits come from (tied embeddings)."""
    from harness.rollout import output_layer, response_hidden, shared_prefix_hidden

    model = build_model(ModelSize(64, 2, 128, 4, 2), 17, 64, seed=0)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 17, (2, 7), generator=gen).repeat_interleave(3, 0)
    responses = torch.randint(0, 17, (6, 9), generator=gen)
    weight, bias = output_layer(model)
    assert weight is model.get_input_embeddings().weight and bias is None
    with torch.no_grad():
        logits = response_logits(model, prompts, responses)
        for hidden in (response_hidden(model, prompts, responses), shared_prefix_hidden(model, prompts, responses, 3)):
            torch.testing.assert_close(torch.nn.functional.linear(hidden, weight), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_lean_decode_step_gives_the_same_samples(bf16):
    """``lean``: the local engine's decode step computes exactly the model's forward — bitwise the same
    tokens, μ log-probs and top-K, while rows leave the batch; padded prompts use the model's forward."""
    from harness import decode

    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    if bf16:
        model = model.to(torch.bfloat16)
    assert decode.supports(model)
    prompts = torch.tensor([[tok.bos_id] + tok.encode(t) for t in ("12+34=", "56+78=", "90+11=")] * 4)
    runs = [sample(model, prompts, 24, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(5), record_top_k=4,
                   lean=lean) for lean in (False, True)]
    assert runs[0].finished.any() and not runs[0].finished.all()
    for key in ("response_ids", "response_mask", "finished", "rollout_logp", "rollout_topk_ids", "rollout_topk_logp"):
        assert torch.equal(getattr(runs[0], key), getattr(runs[1], key)), key


def test_a_rollout_hands_back_ordinary_tensors_a_loss_may_save():
    """``sample`` decodes under ``torch.inference_mode`` but returns tensors autograd may save for a
    backward (an inference tensor may not be), and leaves its input alone."""
    tok = CharTokenizer(ADDITION)
    model = build_model(ModelSize(32, 2, 64, 2, 1), tok.vocab_size, 64, seed=0)
    prompts = torch.tensor([[tok.bos_id] + tok.encode("12+34=")] * 2)
    roll = sample(model, prompts, 6, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0), record_top_k=4,
                  lean=True)
    fields = (roll.prompt_ids, roll.response_ids, roll.response_mask, roll.finished, roll.rollout_logp,
              roll.rollout_topk_ids, roll.rollout_topk_logp)
    assert not any(t.is_inference() for t in fields) and roll.prompt_ids is prompts
    weight = torch.ones(roll.rollout_logp.shape, requires_grad=True)
    (weight * roll.rollout_logp).sum().backward()  # saves rollout_logp for the backward
    assert torch.equal(weight.grad, roll.rollout_logp)
