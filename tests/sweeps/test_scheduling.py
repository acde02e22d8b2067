"""The driver's scheduling, on a simulated runner: how many cells run at once, the shared last round,
and cells finished before that take no slot and no poll."""

from types import SimpleNamespace

from sweeps.driver import _eta, room_for, run_cells
from sweeps.runner import Outcome


class SimulatedRunner:
    """Each started cell finishes after ``polls`` polls; cells named in ``finished`` come back at once."""

    def __init__(self, polls=2, finished=()):
        self.polls, self.finished = polls, set(finished)
        self.active, self.elsewhere, self.log = {}, {}, lambda *_: None
        self.concurrency, self.poll_count = [], 0

    @property
    def in_flight(self):
        return len(self.active)

    def start(self, cells):
        done = [Outcome(c, "done", {}, None) for c in cells if c.id in self.finished]
        self.active.update({c.id: (c, self.polls) for c in cells if c.id not in self.finished})
        return done

    def poll(self):
        self.poll_count += 1
        self.concurrency.append(len(self.active))
        self.active = {k: (c, left - 1) for k, (c, left) in self.active.items()}
        done = [Outcome(c, "done", {}, 1.0) for c, left in self.active.values() if left == 0]
        self.active = {k: v for k, v in self.active.items() if v[1] > 0}
        return done


def _cells(n):
    return [SimpleNamespace(id=f"c{i}", describe=lambda: "cell") for i in range(n)]


def _run(n, workers, share_tail, **runner):
    sim = SimulatedRunner(**runner)
    outcomes = run_cells(_cells(n), sim, workers, progress=False, poll_s=0, share_tail=share_tail)
    assert [o.cell.id for o in outcomes] == [f"c{i}" for i in range(n)]
    return sim


def test_room_for_fills_the_workers_and_shares_only_the_last_round():
    assert room_for(2, 0, 7) == 2 and room_for(2, 1, 6) == 1 and room_for(2, 2, 5) == 0
    assert room_for(2, 0, 5, share_tail=True) == 2          # 5 left: two full rounds remain possible
    assert room_for(2, 0, 3, share_tail=True) == 3          # 3 left on 2 workers: all at once
    assert room_for(2, 2, 1, share_tail=True) == 1
    assert room_for(1, 0, 1, share_tail=True) == 1 and room_for(1, 0, 2, share_tail=True) == 1


def test_seven_cells_on_two_workers_run_two_two_three_with_a_shared_tail():
    plain, shared = _run(7, 2, False), _run(7, 2, True)
    assert max(plain.concurrency) == 2 and plain.concurrency[-1] == 1  # a last round with one core idle
    assert max(shared.concurrency) == 3 and min(shared.concurrency) == 2
    assert shared.poll_count == 3 * 2 and plain.poll_count == 4 * 2


def test_cells_finished_before_take_no_slot_and_no_poll():
    sim = _run(12, 2, False, finished={f"c{i}" for i in range(10)})
    assert sim.poll_count == 2 and sim.concurrency == [2, 2]  # the two new cells start at once


def test_eta_counts_rounds_and_a_shared_last_round():
    assert _eta([30.0, 40.0, 50.0], 3, 2) == "80s"                   # two rounds of the median 40 s
    assert _eta([30.0, 40.0, 50.0], 3, 2, share_tail=True) == "60s"  # three cells sharing two cores
    assert _eta([600.0], 5, 2, share_tail=True) == "30m" and _eta([], 1, 2) == "?" and _eta([1.0], 0, 2) == "0s"


def test_a_log_file_gets_a_line_per_finished_cell_not_per_poll(capsys):
    sim = SimulatedRunner(polls=20)
    run_cells(_cells(4), sim, 2, progress=True, poll_s=0)
    drawn = capsys.readouterr().err.count("running ")
    assert sim.poll_count == 40 and drawn <= 4  # one per change of the count (0, 2, 4 finished), not 40
