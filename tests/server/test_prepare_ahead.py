"""Waiting jobs prepared ahead: the scheduler's own thread runs a job's ``prepare`` while the job
waits (for the jobs next in the rotation, a bounded number at once), and the job worker that
takes the job gets that outcome; on a real server too."""

from __future__ import annotations

import threading
import time

import pytest
from impasto.client import Client, Progress, Result, Started
from impasto_server.scheduler import Job, Scheduler
from job_watch import LONG, SHORT, Watcher, wait_until


class Recorder:
    """A job's prepare and work: which thread prepared which job, and what each job got."""

    def __init__(self, fail: str | None = None) -> None:
        self.made: list[tuple[str, str]] = []  # (client, thread)
        self.got: dict[str, object] = {}
        self.fail = fail
        self.release = threading.Event()  # the blocker's job ends
        self.hold: dict[str, threading.Event] = {}  # these clients' jobs end when set

    def prepare(self, job: Job) -> str:
        self.made.append((job.client, threading.current_thread().name))
        if job.client == self.fail:
            raise ValueError(f"{job.client} cannot be prepared")
        return f"prepared {job.client}"

    def work(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.client == "blocker":
                assert self.release.wait(30)
                continue
            try:
                self.got[job.client] = job.prepared()
            except ValueError as exc:
                self.got[job.client] = exc
            if job.client in self.hold:
                assert self.hold[job.client].wait(30)


def scheduler_with_a_running_job(recorder: Recorder, ahead: int, threads: int = 1) -> Scheduler:
    scheduler = Scheduler(max_running=1, prepare_ahead=ahead, prepare_threads=threads)
    scheduler.submit(Job(client="blocker", work=recorder.work))
    wait_until(lambda: scheduler.running == 1)
    return scheduler


def submit(scheduler: Scheduler, recorder: Recorder, *clients: str) -> dict[str, Job]:
    jobs = {c: Job(client=c, work=recorder.work, prepare=recorder.prepare) for c in clients}
    for job in jobs.values():
        scheduler.submit(job)
    return jobs


def test_the_next_jobs_are_prepared_ahead_and_run_with_it():
    recorder = Recorder()
    scheduler = scheduler_with_a_running_job(recorder, ahead=2)
    try:
        recorder.hold["b"] = threading.Event()
        submit(scheduler, recorder, "b", "c", "d")
        wait_until(lambda: len(recorder.made) == 2)
        time.sleep(0.3)  # no more: two waiting jobs hold what was made for them
        assert recorder.made == [("b", "impasto-prepare-0"), ("c", "impasto-prepare-0")]
        assert scheduler.queued == 3
        recorder.release.set()
        # b runs (with what was made for it); d is prepared ahead meanwhile
        wait_until(lambda: len(recorder.made) == 3)
        assert recorder.made[2] == ("d", "impasto-prepare-0")
        assert recorder.got == {"b": "prepared b"}
        recorder.hold["b"].set()
        wait_until(lambda: len(recorder.got) == 3)
        assert recorder.got == {c: f"prepared {c}" for c in "bcd"}
    finally:
        recorder.release.set()
        for event in recorder.hold.values():
            event.set()
        scheduler.close()


def test_threads_prepare_different_jobs_at_once():
    recorder = Recorder()
    together = threading.Barrier(3, timeout=10)  # each prepare waits for the other two
    prepare = recorder.prepare

    def meeting(job: Job) -> str:
        made = prepare(job)
        together.wait()  # one thread alone would wait here in vain, and raise
        return made

    recorder.prepare = meeting  # type: ignore[method-assign]
    scheduler = scheduler_with_a_running_job(recorder, ahead=3, threads=3)
    try:
        submit(scheduler, recorder, "b", "c", "d")
        wait_until(lambda: len(recorder.made) == 3)
        assert sorted(client for client, _ in recorder.made) == ["b", "c", "d"]
        assert {thread for _, thread in recorder.made} == {f"impasto-prepare-{i}" for i in range(3)}
        recorder.release.set()
        wait_until(lambda: len(recorder.got) == 3)
        assert recorder.got == {c: f"prepared {c}" for c in "bcd"}
    finally:
        recorder.release.set()
        scheduler.close()
    with pytest.raises(ValueError, match="prepare_threads"):
        Scheduler(prepare_ahead=1, prepare_threads=0)


def test_a_cancelled_job_makes_room_for_the_next():
    recorder = Recorder()
    scheduler = scheduler_with_a_running_job(recorder, ahead=1)
    try:
        jobs = submit(scheduler, recorder, "b", "c")
        wait_until(lambda: recorder.made == [("b", "impasto-prepare-0")])
        scheduler.cancel(jobs["b"])
        assert jobs["b"].state == "done"
        wait_until(lambda: recorder.made[-1] == ("c", "impasto-prepare-0"))
        recorder.release.set()
        wait_until(lambda: "c" in recorder.got)
        assert recorder.got == {"c": "prepared c"}
    finally:
        recorder.release.set()
        scheduler.close()


def test_an_error_made_ahead_is_raised_where_the_job_runs():
    recorder = Recorder(fail="b")
    scheduler = scheduler_with_a_running_job(recorder, ahead=2)
    try:
        submit(scheduler, recorder, "b", "c")
        wait_until(lambda: len(recorder.made) == 2)
        recorder.release.set()
        wait_until(lambda: len(recorder.got) == 2)
        assert isinstance(recorder.got["b"], ValueError)
        assert "b cannot be prepared" in str(recorder.got["b"])
        assert recorder.got["c"] == "prepared c"
    finally:
        recorder.release.set()
        scheduler.close()


def test_no_preparing_ahead_at_zero():
    recorder = Recorder()
    scheduler = scheduler_with_a_running_job(recorder, ahead=0)
    try:
        submit(scheduler, recorder, "b")
        time.sleep(0.3)
        assert recorder.made == []
        recorder.release.set()
        wait_until(lambda: "b" in recorder.got)
        assert recorder.made == [("b", "impasto-job-0")]
    finally:
        recorder.release.set()
        scheduler.close()
    with pytest.raises(ValueError, match="prepare_ahead"):
        Scheduler(prepare_ahead=-1)


@pytest.mark.parametrize("ahead", [None, 0])
def test_a_server_prepares_a_queued_job_ahead(make_server, tiny_content, tiny_style, ahead):
    server = make_server(max_running=1, prepare_ahead=ahead)
    service = server.service
    threads: list[str] = []
    prepare = service._prepare

    def recorded(job, claim):
        threads.append(threading.current_thread().name)
        return prepare(job, claim)

    service._prepare = recorded  # what each new job's prepare is
    with Client(server.address) as a, Client(server.address) as b:
        running = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        running.wait_for(Progress)
        queued = Watcher(b.stylize(tiny_content, [tiny_style], **SHORT))
        if ahead is None:  # the default: one batch's jobs (one, on a CPU)
            wait_until(lambda: len(threads) == 2)
        else:
            time.sleep(0.3)
        assert not queued.has(Started)
        running.job.cancel()
        assert queued.done.wait(30) and queued.error is None
        assert isinstance(queued.events[-1], Result)
    if ahead is None:
        # the first job waited in the queue a moment too, so either thread may have made it;
        # the second, queued while the worker ran the first, only the preparer could make
        assert threads[0] in ("impasto-job-0", "impasto-prepare-0")
        assert threads[1:] == ["impasto-prepare-0"]
    else:
        assert threads == ["impasto-job-0", "impasto-job-0"]


def test_prepare_ahead_flag():
    from impasto_server.app import ServerConfig, parse_args

    assert parse_args([]).prepare_ahead is ServerConfig().prepare_ahead is None
    assert parse_args(["--prepare-ahead", "0"]).prepare_ahead == 0
    with pytest.raises(SystemExit):
        parse_args(["--prepare-ahead", "-1"])
    assert parse_args([]).prepare_threads == ServerConfig().prepare_threads == 1
    assert parse_args(["--prepare-threads", "4"]).prepare_threads == 4
    with pytest.raises(SystemExit):
        parse_args(["--prepare-threads", "0"])


def test_a_server_runs_its_prepare_threads(make_server):
    server = make_server(load=False, max_batch=4, prepare_threads=2)
    alive = [t.name for t in server.scheduler._workers if t.is_alive()]
    assert alive == ["impasto-job-0", "impasto-prepare-0", "impasto-prepare-1"]
    assert server.scheduler.prepare_ahead == 4  # one batch's jobs, as before
