"""
Exact resumption: the training data stream is a pure function of (seed, position), its state and
the run seed travel in the checkpoint, and a run stopped by SIGTERM and resumed with --resume logs
the same losses, learning rates and final evaluation as the uninterrupted run.
"""

import json
import random
import signal
import socket
import subprocess

import numpy as np
import pytest
import torch

from maskformer.data.resumable import ResumableTrainLoader, TrainingStream
from maskformer.engine.preemption import PREEMPTED_EXIT_CODE
from tests.utils.processes import kill_session, start, wait_until
from tests.utils.training import LAUNCHER, tiny_train_args

NUM_DICTS = 7


def make_dicts(num=NUM_DICTS):
    """Dataset dicts of alternating orientation (for aspect-ratio grouping)."""
    return [
        {"index": i, "width": 40 if i % 3 else 20, "height": 30, "file_name": f"{i}.jpg"}
        for i in range(num)
    ]


class DrawingMapper:
    """The dict plus one draw from each global generator (as augmentations draw); ``bad``
    indices are turned down (None), as SkipBadSamples does with a bad file."""

    def __init__(self, bad=()):
        self.bad = set(bad)

    def __call__(self, d):
        if d["index"] in self.bad:
            return None
        draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
        return {**d, "draws": draws}


def take(iterable, n):
    it = iter(iterable)
    return [next(it) for _ in range(n)]


def test_stream_from_a_start_is_the_tail_of_the_full_stream():
    full = take(TrainingStream(make_dicts(), DrawingMapper(), seed=3, rank=0, world_size=1), 20)
    tail = take(
        TrainingStream(make_dicts(), DrawingMapper(), seed=3, rank=0, world_size=1, start=9), 11
    )
    assert tail == full[9:]
    assert [j for j, _ in full] == list(range(20))
    # each epoch is a permutation, and epochs (and seeds) differ
    epochs = [[s["index"] for _, s in full[e * NUM_DICTS : (e + 1) * NUM_DICTS]] for e in (0, 1)]
    assert all(sorted(e) == list(range(NUM_DICTS)) for e in epochs) and epochs[0] != epochs[1]
    other = take(TrainingStream(make_dicts(), DrawingMapper(), seed=4, rank=0, world_size=1), 7)
    assert [s["index"] for _, s in other] != epochs[0]
    # every sample's draws are its own, not a continuation of the previous sample's
    assert len({s["draws"] for _, s in full}) == len(full)


def test_ranks_read_disjoint_positions_covering_each_epoch():
    world_size, per_rank = 3, NUM_DICTS * 2
    streams = [
        TrainingStream(make_dicts(), DrawingMapper(), 5, rank, world_size)
        for rank in range(world_size)
    ]
    positions = sorted(s.position(j) for s in streams for j in range(per_rank))
    assert positions == list(range(world_size * per_rank))
    by_position = {s.position(j): s.sample(j)["index"] for s in streams for j in range(per_rank)}
    single = TrainingStream(make_dicts(), DrawingMapper(), 5, 0, 1)
    # the ranks together read the single-process stream
    assert [by_position[g] for g in range(NUM_DICTS * 6)] == [
        single.sample(g)["index"] for g in range(NUM_DICTS * 6)
    ]


def test_mapping_leaves_the_callers_generators_alone():
    stream = TrainingStream(make_dicts(), DrawingMapper(), 0, 0, 1)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(()), np.random.rand(), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    stream.sample(4)
    assert (torch.rand(()), np.random.rand(), random.random()) == expected


def test_turned_down_samples_are_replaced_deterministically():
    bad = {1, 4}
    stream = TrainingStream(make_dicts(), DrawingMapper(bad), 2, 0, 1)
    samples = [stream.sample(j) for j in range(3 * NUM_DICTS)]
    assert not {s["index"] for s in samples} & bad
    again = TrainingStream(make_dicts(), DrawingMapper(bad), 2, 0, 1)
    assert [again.sample(j) for j in reversed(range(3 * NUM_DICTS))] == samples[::-1]


def batches_of(loader, n):
    return [[(s["index"], s["draws"]) for s in batch] for batch in take(loader, n)]


@pytest.mark.parametrize("grouping", [False, True])
def test_loader_resumed_from_its_state_continues_the_same_batches(grouping):
    def loader():
        return ResumableTrainLoader(
            make_dicts(), DrawingMapper(bad={2}), 3, seed=7, aspect_ratio_grouping=grouping
        )

    full = batches_of(loader(), 10)
    first = loader()
    it = iter(first)
    take(it, 4)
    state = first.state_dict()
    if grouping:
        # samples of the other orientation are waiting: they are part of the state
        assert any(state["ranks"][0]["pending"])
        sizes = [[s["width"] > s["height"] for s in batch] for batch in take(loader(), 10)]
        assert all(len(set(batch)) == 1 for batch in sizes)
    resumed = loader()
    resumed.seed = 123  # the run seed comes from the checkpoint
    resumed.load_state_dict(state)
    assert batches_of(resumed, 6) == full[4:]


def rank_loaders(world_size, grouping=True):
    """Loaders of the ranks of ``world_size`` processes, made in this one process."""
    loaders = []
    for rank in range(world_size):
        loader = ResumableTrainLoader(
            make_dicts(), DrawingMapper(), 2, seed=7, aspect_ratio_grouping=grouping
        )
        loader.rank, loader.world_size = rank, world_size
        loaders.append(loader)
    return loaders


def test_every_ranks_buckets_are_in_the_state():
    """The main process saves all ranks' states (gather_state collects them after each step)."""
    full = [batches_of(loader, 8) for loader in rank_loaders(3)]
    first = rank_loaders(3)
    for loader, num in zip(first, (3, 4, 5)):  # ranks may be at different positions
        take(loader, num)
    state = {"seed": 7, "world_size": 3, "ranks": [loader._local_state() for loader in first]}
    for loader, num, expected in zip(rank_loaders(3), (3, 4, 5), full):
        loader.load_state_dict(state)
        assert batches_of(loader, 8 - num) == expected[num:]


def test_another_number_of_processes_restarts_at_the_first_unread_position(caplog):
    first = rank_loaders(2)
    take(first[0], 3), take(first[1], 2)
    states = [loader._local_state() for loader in first]
    first_unread = min(
        2 * min([s["next"], *(j for b in s["pending"] for j in b)]) + rank
        for rank, s in enumerate(states)
    )
    single = rank_loaders(1, grouping=False)[0]
    with caplog.at_level("WARNING", logger="maskformer.data.resumable"):
        single.load_state_dict({"seed": 7, "world_size": 2, "ranks": states})
    assert f"restarts at position {first_unread}, not exactly" in caplog.text
    stream = TrainingStream(make_dicts(), DrawingMapper(), 7, 0, 1)
    batch = next(iter(single))
    assert batch[0] == stream.sample(first_unread)


def test_batches_do_not_depend_on_the_number_of_workers():
    def loader(workers):
        return ResumableTrainLoader(
            make_dicts(),
            DrawingMapper(),
            2,
            seed=1,
            num_workers=workers,
            aspect_ratio_grouping=True,
        )

    assert batches_of(loader(2), 8) == batches_of(loader(0), 8)


def test_starting_the_loader_draws_nothing_from_torchs_generator():
    loader = ResumableTrainLoader(make_dicts(), DrawingMapper(), 2, seed=1, num_workers=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# end to end: train_net.py stopped by SIGTERM and resumed against the uninterrupted run

MAX_ITER, PERIOD = 8, 2
# metrics.json gets a line every iteration (detectron2 writes every 20): every later iteration
# is compared, each line's losses being medians over the iterations so far (window 20)
EVERY_ITERATION_LAUNCHER = LAUNCHER.replace(
    'if __name__ == "__main__":',
    """from detectron2.engine import hooks
_writer_init = hooks.PeriodicWriter.__init__
hooks.PeriodicWriter.__init__ = lambda self, writers, period=20: _writer_init(self, writers, 1)
if __name__ == "__main__":""",
)
NOT_COMPARED = {"time", "data_time", "rank_data_time", "eta_seconds"}


def metrics_by_iteration(path):
    """{iteration: its line of metrics.json without the timing fields, as JSON (NaN == NaN)}."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    metrics = {}
    for m in lines:
        assert m["iteration"] not in metrics, f"two lines for iteration {m['iteration']}"
        kept = {k: v for k, v in m.items() if k not in NOT_COMPARED}
        metrics[m["iteration"]] = json.dumps(kept, sort_keys=True)
    return metrics


@pytest.fixture(scope="module")
def every_iteration_launcher(train_net_launcher):
    command, env = train_net_launcher
    script = command[1].replace("launch_train_net.py", "launch_train_net_every_iteration.py")
    with open(script, "w") as f:
        f.write(EVERY_ITERATION_LAUNCHER)
    return [command[0], script, *command[2:]], env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_resume_and_compare(tmp_path, command, env, extra, processes=1):
    """
    Run train_net.py ``extra`` uninterrupted, and alongside it a run stopped by SIGTERM after its
    first checkpoint then resumed; assert that both wrote the same metrics.json (but for times)
    and eval_results.json.
    """

    def args(out):
        # runs side by side need their own rendezvous port
        launch = ["--num-gpus", str(processes), "--dist-url", f"tcp://127.0.0.1:{free_port()}"]
        return [*launch, *tiny_train_args(out, MAX_ITER, PERIOD, *extra)]

    whole = tmp_path / "whole"
    uninterrupted = start(command + args(whole), env, tmp_path / "whole.log")
    stopped = tmp_path / "stopped"
    run = start(command + args(stopped), env, tmp_path / "first.log")
    try:
        wait_until((stopped / "model_0000001.pth").exists, 300, "the first checkpoint", run)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=300) == PREEMPTED_EXIT_CODE
        assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    finally:
        kill_session(run)
        kill_session(uninterrupted)
    last = (stopped / "last_checkpoint").read_text()
    stop_iter = torch.load(stopped / last, weights_only=True)["iteration"]
    assert 1 <= stop_iter < MAX_ITER - 1, "stopped too late to compare a resumed run"
    resumed = subprocess.run(
        command + ["--resume"] + args(stopped), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = metrics_by_iteration(whole / "metrics.json")
    got = metrics_by_iteration(stopped / "metrics.json")
    # the evaluation is logged at MAX_ITER
    assert sorted(got) == sorted(expected) == list(range(MAX_ITER + 1))
    for iteration in range(MAX_ITER + 1):
        assert (
            got[iteration] == expected[iteration]
        ), f"iteration {iteration} (stopped at {stop_iter})"
    assert "sem_seg/mIoU" in expected[MAX_ITER]
    assert (stopped / "eval_results.json").read_text() == (whole / "eval_results.json").read_text()


def test_stopped_and_resumed_run_logs_what_the_uninterrupted_run_does(
    tmp_path, every_iteration_launcher
):
    command, env = every_iteration_launcher
    extra = [
        # workers map samples in another order than the main process consumes them
        "DATALOADER.NUM_WORKERS", "2",
        # randomness in the model itself
        "MODEL.MASK_FORMER.DROPOUT", "0.1",
        # and a final evaluation
        "DATASETS.TEST", '("reltest_sem_seg_val",)',
    ]  # fmt: skip
    stop_resume_and_compare(tmp_path, command, env, extra)


@pytest.mark.slow  # four 2-process runs (about 3 minutes on 2 cores)
def test_two_processes_with_aspect_ratio_grouping_resume_exactly(
    tmp_path, every_iteration_launcher
):
    """Ranks with samples waiting in their buckets: the checkpoint holds every rank's."""
    command, env = every_iteration_launcher
    extra = [
        "DATALOADER.ASPECT_RATIO_GROUPING", "True", "SOLVER.IMS_PER_BATCH", "4",
        "DATASETS.TEST", '("reltest_sem_seg_val",)',
    ]  # fmt: skip
    stop_resume_and_compare(tmp_path, command, env, extra, processes=2)
