"""The addition task: generator, reference solutions, splits and the verifier."""

import pytest

from harness.tasks.addition import ALPHABET as ADDITION
from harness.tasks import addition as tasks
from harness.model import CharTokenizer


def test_reference_solution_and_answer():
    p = tasks.Problem(123, 456, 3)
    assert p.prompt == "123+456="
    assert p.solution() == "3+6+0=09;2+5+0=07;1+4+0=05;>579"
    carry = tasks.Problem(95, 17, 2)
    assert carry.solution() == "5+7+0=12;9+1+1=11;>112"
    assert len(CharTokenizer(ADDITION).encode(carry.solution())) + 1 <= tasks.response_length(2)


@pytest.mark.parametrize("response, finished, expected", [
    ("3+6+0=09;2+5+0=07;1+4+0=05;>579", True, 1.0),      # correct
    ("garbage scratchpad>579", True, 1.0),                 # only the final answer is verified
    ("3+6+0=09;2+5+0=07;1+4+0=05;>578", True, 0.0),      # wrong
    ("3+6+0=09;2+5+0=07;1+4+0=05;>0579", True, 0.0),     # not exactly the answer
    ("3+6+0=09;2+5+0=07;1+4+0=05;579", True, 0.0),       # malformed: no answer marker
    ("3+6+0=09;>57+9", True, 0.0),                        # malformed answer
    (">579>5", True, 0.0),                                # the last marker counts
    ("3+6+0=09;2+5+0=07;1+4+0=05;>579", False, 0.0),     # truncated: no end token
    ("3+6+0=09;2+5", False, 0.0),                          # truncated mid-scratchpad
    ("", True, 0.0),
])
def test_verifier(response, finished, expected):
    assert tasks.reward(tasks.Problem(123, 456, 3), response, finished) == expected


def test_splits_are_disjoint_deterministic_and_seeded():
    train = tasks.sample_problems("train", 400, 3, seed=0)
    assert train == tasks.sample_problems("train", 400, 3, seed=0)
    assert train != tasks.sample_problems("train", 400, 3, seed=1)
    held_out = tasks.SPLITS + tasks.TEST_SPLITS
    pairs = {split: {(p.a, p.b) for p in tasks.validation_set(split, 40, 3)} for split in held_out}
    train_pairs = {(p.a, p.b) for p in train}
    for split in held_out:
        assert len(pairs[split]) == 40
        assert not pairs[split] & train_pairs
        assert all(tasks.split_of(tasks.Problem(a, b, 3)) == split for a, b in pairs[split])
        for other in held_out:
            if other != split:
                assert not pairs[split] & pairs[other]


def test_test_splits_leave_the_training_stream_unchanged():
    """The test splits are carved out of the held-out buckets: no training problem moved."""
    import hashlib
    for p in tasks.sample_problems("train", 2000, 3, seed=5):
        digest = hashlib.blake2b(f"3:{p.a}:{p.b}".encode(), digest_size=8).digest()
        assert int.from_bytes(digest, "little") % 20 < 17
    counts = {s: 0 for s in tasks.SPLITS + tasks.TEST_SPLITS + ("train",)}
    for a in range(0, 1000, 7):
        for b in range(0, 1000, 11):
            counts[tasks.split_of(tasks.Problem(a, b, 3))] += 1
    total = sum(counts.values())
    assert 0.83 < counts["train"] / total < 0.87
    for split in tasks.SPLITS + tasks.TEST_SPLITS:  # each held-out split ≈ 1/40 of all pairs
        assert 0.02 < counts[split] / total < 0.03, (split, counts)


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="split"):
        tasks.sample_problems("test", 3, 3, 0)
    assert len(tasks.sample_problems("test_b", 3, 3, 0)) == 3
    with pytest.raises(ValueError, match="digits"):
        tasks.sample_problems("train", 3, 0, 0)
    with pytest.raises(ValueError, match="too small"):
        tasks.validation_set("val_a", 100, 1)


def test_tokenizer_round_trip_and_alphabet_errors():
    tok = CharTokenizer(ADDITION)
    text = "12+34=4+2+0=06;>46"
    assert tok.decode(tok.encode(text) + [tok.eos_id, 5, 6]) == text
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("1a")


# --- the chain task (a lagged running sum mod 10): the long-horizon task -------------------------
def test_chain_reference_answer_and_horizon():
    from harness.tasks import make_task
    from harness.tasks.chain import ChainConfig, ChainProblem

    p = ChainProblem("407")
    assert p.prompt == "407" and p.digits(7) == "1189087"
    assert make_task(ChainConfig(length=7, lag=3)).reference(p) == "1189087>87"
    task = make_task(ChainConfig(length=231))
    assert task.max_response_tokens == 235 >= 4 * 58  # four times the embedded study's longest response
    (q,) = task.problems("train", 1, seed=3)
    ref = task.reference(q)
    assert len(CharTokenizer(task.alphabet).encode(ref)) + 1 == task.max_response_tokens
    assert task.reward(q, ref) == 1.0 and task.reward(q, ref, finished=False) == 0.0


def test_an_early_chain_mistake_reaches_the_answer():
    """One wrong digit early in the chain, every later digit computed correctly from what is written:
    the answer is wrong in nearly every case (unlike a step of addition, whose mistake stays local)."""
    from harness.tasks import make_task
    from harness.tasks.chain import ChainConfig

    task = make_task(ChainConfig(length=60))
    wrong = 0
    problems = task.problems("train", 200, seed=0)
    for q in problems:
        digits = [int(d) for d in q.seed + q.digits(60)]
        digits[8 + 2] = (digits[8 + 2] + 1) % 10  # the third generated digit is off by one
        for i in range(8 + 3, len(digits)):
            digits[i] = (digits[i - 1] + digits[i - 8]) % 10
        response = "".join(map(str, digits[8:]))
        wrong += task.reward(q, f"{response}>{response[-2:]}") == 0.0
        assert task.reward(q, task.reference(q)) == 1.0
    assert wrong >= 0.9 * len(problems)


def test_chain_splits_are_disjoint_and_seeded():
    from harness.tasks import make_task
    from harness.tasks.chain import ChainConfig

    task = make_task(ChainConfig(length=12))
    train = {p.seed for p in task.problems("train", 300, seed=0)}
    assert train == {p.seed for p in task.problems("train", 300, seed=0)}
    assert train != {p.seed for p in task.problems("train", 300, seed=1)}
    held = {s: {p.seed for p in task.problems(s, 30)} for s in task.validation_splits + task.test_splits}
    for split, seeds in held.items():
        assert len(seeds) == 30 and not seeds & train
        assert all(not seeds & other for name, other in held.items() if name != split)
    with pytest.raises(ValueError, match="split must be"):
        task.problems("dev", 3)
