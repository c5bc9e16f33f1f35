"""Progress in a log file: whole lines every train.log_every steps or every EVERY_S seconds (an
injected clock, never the wall clock), not one per step; a terminal still gets tqdm's bar."""
import io
import itertools

import pytest

from conftest import tiny_config
from mcl_dist.core import progress as progress_mod
from mcl_dist.core.progress import progress, track


class TTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """Seconds that advance by `step` at each reading."""

    def __init__(self, step):
        self.step, self.now = step, 0.0

    def __call__(self):
        self.now += self.step
        return self.now


def test_a_log_file_gets_a_line_per_every_n_not_per_step():
    out = io.StringIO()
    bar = progress(1000, desc="stage 1", unit="step", stream=out, every_n=50, clock=lambda: 0.0)
    for step in range(1000):
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1000 // 50 and "\r" not in out.getvalue()
    assert lines[0].startswith("stage 1: 50/1,000 step (5%)") and lines[0].endswith("loss=0.020")
    assert lines[-1].startswith("stage 1: 1,000/1,000 step (100%)")


def test_without_every_n_a_line_every_every_s_seconds_and_one_at_the_end():
    out, clock = io.StringIO(), Clock(step=7.0)  # a 7 s step, a line at least 60 s apart
    for _ in track(range(500), 500, desc="k-means", stream=out, every_s=60.0, clock=clock):
        pass
    lines = out.getvalue().splitlines()
    elapsed = clock.now
    assert 1 <= len(lines) <= elapsed / 60.0 + 1
    assert lines[-1].startswith("k-means: 500/500 it (100%)")
    assert "left" in lines[0] and "it/s" in lines[0]  # a rate and what remains, from the injected clock


def test_resumed_count_starts_at_initial_and_unknown_total_prints_a_count():
    out = io.StringIO()
    bar = progress(100, initial=40, desc="stage 0", unit="step", stream=out, every_n=20, clock=itertools.count().__next__)
    for _ in range(60):
        bar.update(1)
    bar.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "stage 0: 60/100 step (60%)", "stage 0: 80/100 step (80%)", "stage 0: 100/100 step (100%)"]
    out = io.StringIO()
    bar = progress(desc="embed (image)", unit="sample", stream=out, clock=lambda: 0.0)
    bar.update(300)
    bar.close()
    assert out.getvalue().startswith("embed (image): 300 sample, 0 s elapsed")


def test_a_terminal_gets_the_bar_and_disabled_prints_nothing():
    out = TTY()
    bar = progress(10, desc="stage 0", unit="step", stream=out, every_n=5)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert type(bar).__name__ == "tqdm" and "\r" in out.getvalue() and "10/10" in out.getvalue()
    out = io.StringIO()
    bar = progress(10, desc="x", stream=out, enabled=False)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""


def test_training_into_a_log_file_writes_a_line_per_log_every(tmp_path, shards, capsys, monkeypatch):
    """A real tiny run through the launcher, stderr captured (not a terminal): 24 steps with
    log_every 4 give 6 lines for the stage, not 24, with a clock that never reaches EVERY_S; a
    12 s clock adds at most one line per EVERY_S of its time."""
    from mcl_dist.commands.pretrain import main

    for tick, name in ((0.0, "a"), (12.0, "b")):
        clock = Clock(step=tick)
        monkeypatch.setattr(progress_mod, "CLOCK", clock)
        cfg = tiny_config(tmp_path, shards, **{"train.max_steps": 24, "train.log_every": 4,
                                               "train.checkpoint_every": 24, "train.global_batch_size": 8})
        assert main(["--config", cfg, "--run-dir", str(tmp_path / name)]) == 0
        err = capsys.readouterr().err
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("stage 0:")]
        if tick == 0.0:
            assert [line.split(",")[0] for line in lines] == [f"stage 0: {s}/24 step ({100 * s / 24:.0f}%)"
                                                            for s in range(4, 25, 4)]
            assert all("loss=" in line for line in lines)
        else:
            assert 6 <= len(lines) <= 6 + clock.now / progress_mod.EVERY_S + 1
