"""A run's output folder is protected (hdkd.distill.run_folder), tested with real processes and
signals: an earlier run is refused unless --resume/--overwrite, stale temporary files are removed,
one process writes at a time, SIGTERM/SIGINT stop cleanly with a resume command, SIGKILL at
random points loses nothing (the resumed run equals an uninterrupted one bit for bit), and a full
disk keeps the previous checkpoint."""
from __future__ import annotations

import os
import random
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hdkd.cli import main
from hdkd.distill import checkpoint as ckpt
from hdkd.distill.run_folder import LOCK_NAME, RunFolder, RunFolderError
from test_cli import image_folder

EPOCHS = 12
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_args(data, out, epochs=EPOCHS, extra=()):
    return ["train", "--model", "hdkd_student", "--data", str(data), "--out", str(out),
            "--img-size", "16", "--batch-size", "4", "--epochs", str(epochs), "--no-augment",
            "--no-progress", "--no-plots", "--seed", "3", *extra]


def _start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "hdkd", *args], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _run(args) -> subprocess.CompletedProcess:
    """A whole `hdkd` process, with the same thread count as the ones that get signals (results
    are bit for bit only at equal thread counts)."""
    return subprocess.run([sys.executable, "-m", "hdkd", *args], env=ENV, capture_output=True,
                          text=True, timeout=300)


def _epochs_logged(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _wait_for(condition, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _weights(path: Path) -> dict:
    return ckpt.read_checkpoint(path)["model"]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "last.pt"), _weights(b / "last.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [re.sub(r'"seconds": [0-9.e-]+', "", line)
             for line in (a / "log.jsonl").read_text().splitlines()]
    assert strip == [re.sub(r'"seconds": [0-9.e-]+', "", line)
                     for line in (b / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("data"), per_class=8, size=16)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted run, the reference for the interrupted ones."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = _run(_train_args(data, out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_an_earlier_run_is_refused_before_anything_is_loaded(straight, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in straight.iterdir()}
    # the data path does not exist: the refusal must come first
    code = main(_train_args(tmp_path / "no-such-data", straight))
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in straight.iterdir()} == before


def test_overwrite_replaces_the_earlier_run(data, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(data, out, epochs=2)) == 0
    assert main(_train_args(data, out, epochs=1, extra=["--overwrite"])) == 0
    assert _epochs_logged(out) == 1 and ckpt.read_checkpoint(out / "last.pt")["epoch"] == 1


def test_demo_refuses_an_earlier_demo(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_stale_temporary_files_are_removed_and_others_kept(tmp_path):
    stale = [tmp_path / ".last.pt.ab3_x9zq.tmp", tmp_path / ".log.jsonl.0123abcd.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".last.pt.tmp", tmp_path / "last.pt.12345678.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x")
    with RunFolder(tmp_path, resume=True) as folder:
        assert sorted(folder.removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_a_second_writer_is_refused_and_a_dead_holder_never_blocks(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hdkd.distill.run_folder import RunFolder\n"
                               "with RunFolder(sys.argv[1]):\n"
                               "    print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"PID {holder.pid}"):
            with RunFolder(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by the killed process: harmless
    with RunFolder(tmp_path):
        pass


def test_two_concurrent_trainings(data, tmp_path):
    out = tmp_path / "run"
    first = _start(_train_args(data, out, epochs=200))
    try:
        _wait_for(lambda: (out / LOCK_NAME).exists() and
                  (out / LOCK_NAME).read_text().strip() == str(first.pid), first)
        second = _run(_train_args(data, out, extra=["--overwrite"]))
        assert second.returncode == 2
        assert f"another process (PID {first.pid})" in second.stderr
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_cleanly_and_the_printed_command_resumes_exactly(data, straight, tmp_path,
                                                                        sig):
    out = tmp_path / "run"
    proc = _start(_train_args(data, out))
    _wait_for(lambda: _epochs_logged(out) >= 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    done = ckpt.read_checkpoint(out / "last.pt")["epoch"]
    assert 2 <= done < EPOCHS and f"holds epoch {done}" in err
    command = re.search(r"continue with: (.*)", err).group(1)
    argv = shlex.split(command)
    assert argv[0] == "hdkd" and argv[-2:] == ["--resume", str(out / "last.pt")]
    resumed = _run(argv[1:])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, straight)


@pytest.mark.parametrize("stop_after_steps", [1, 6, 9])
def test_a_stop_inside_an_epoch_resumes_from_that_step_exactly(data, tmp_path, monkeypatch,
                                                              capsys, stop_after_steps):
    """A real SIGTERM to this process after a chosen number of steps (epochs here have 4 steps:
    1 and 9 stop inside an epoch, 6 inside the second): last.pt holds the steps done, and the
    resumed run equals a straight one bit for bit (all in this process, so at the same thread
    count)."""
    from hdkd.distill.trainer import Trainer

    straight, out = tmp_path / "straight", tmp_path / "run"
    args = _train_args(data, straight, epochs=4)
    assert main(args) == 0
    steps = {"n": 0}
    real_step = Trainer._step

    def step_then_signal(self, *a):
        result = real_step(self, *a)
        steps["n"] += 1
        if steps["n"] == stop_after_steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "_step", step_then_signal)
    assert main(_train_args(data, out, epochs=4)) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    state = ckpt.read_checkpoint(out / "last.pt")
    per_epoch = 4
    assert (state["epoch"], state.get("step", 0)) == divmod(stop_after_steps, per_epoch)
    assert "continue with:" in err
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert main(_train_args(data, out, epochs=4, extra=["--resume", str(out / "last.pt")])) == 0
    _assert_same_run(out, straight)


def test_sigkill_at_random_points_then_resume_equals_a_straight_run(data, straight, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(0)
    for attempt in range(3):
        extra = ["--resume", str(out / "last.pt")] if (out / "last.pt").exists() else []
        proc = _start(_train_args(data, out, extra=extra))
        start = _epochs_logged(out)
        _wait_for(lambda: _epochs_logged(out) > start, proc)
        time.sleep(rng.uniform(0.0, 0.5))  # anywhere in an epoch, a write included
        proc.kill()
        proc.wait()
    assert (out / "last.pt").exists()
    resumed = _run(_train_args(data, out, extra=["--resume", str(out / "last.pt")]))
    assert resumed.returncode == 0, resumed.stderr
    assert "left by an interrupted write" in resumed.stdout or not any(
        p.name.endswith(".tmp") for p in out.iterdir())
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    _assert_same_run(out, straight)


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_keeps_the_previous_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    first = _start(_train_args(data, out))
    _wait_for(lambda: _epochs_logged(out) >= 1, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}
    # a file-size limit below the checkpoint's size: the write fails as on a full disk
    # (Python ignores SIGXFSZ, so the write raises EFBIG)
    proc = subprocess.run([sys.executable, "-m", "hdkd",
                           *_train_args(data, out, extra=["--resume", str(out / "last.pt")])],
                          env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(len(before["last.pt"]) // 2))
    assert proc.returncode == 2, proc.stderr
    assert "not enough space" in proc.stderr and "MB" in proc.stderr
    assert "is intact" in proc.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
