"""How a job ends, and why its end is always the truth.

A job's end is the one thing a batch system may never get wrong. The master (through this mixin of
:class:`~aimaster.master.master.Master`) ends a job exactly one way, :meth:`JobEnd._finish`: publish
the committed outputs (a job whose outputs are not all published did not succeed), write
``report.json``, then the job record, from the master's own memory (never from what reads back, so
a value written over it by hand cannot stop the end being recorded). It gets there:

* when every worker has exited: Succeeded only if every planned slice is committed, by the
  datasets' own validated completion (:meth:`JobEnd._final_state`);
* when a job-level record reads back malformed -- the job record, the master key, a plan -- or the
  job record says something its master never wrote: Failed, the key named in the reason
  (:meth:`JobEnd._fail_on_bad_record`);
* when anything else stops the master: Failed, best effort, with the error as the reason
  (:meth:`JobEnd._end_after_crash`). A job is never left "Running" by a master that has gone.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from aimaster.data import keys
from aimaster.errors import AimasterError, EtcdDataError, JobError
from aimaster.master import report as reporting
from aimaster.master import runs
from aimaster.master.job_state import EXIT_CODES, TERMINAL, JobState
from aimaster.master.monitor import JobView

# The states under the names they had here before aimaster.master.job_state became their home.
SUCCEEDED, FAILED, STOPPED = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED
RUNNING, PENDING = JobState.RUNNING, JobState.PENDING


class JobEnd:
    """The end of a job, for :class:`~aimaster.master.master.Master` (which it is a part of)."""

    def _end_after_crash(self, error: Exception) -> None:
        """Whatever stopped the master, the job it runs must not stay "Running": end it Failed, with
        a report, if etcd still answers (best effort: the error itself is raised on)."""
        if not self.is_master or self.stepped_down or self.job_state in TERMINAL:
            return
        self.fail_reason = f"the master stopped on an error: {type(error).__name__}: {error}"
        self._log(f"error: {self.fail_reason}")
        try:
            self._stop_workers()
            self._finish(JobState.FAILED)
        except Exception as e:  # noqa: BLE001 - etcd is what failed, most likely; the report may still be written
            self._log(f"could not record the job's end in etcd: {e}")

    def _check_job_record(self, view: JobView) -> None:
        """The job record is the master's alone: one that reads back with another state was written
        by someone else (status and a standby would believe it), so the job ends, saying so."""
        if self.opts.join_only or self.job_state is None:
            return
        if view.job.get("state") != self.job_state:
            raise EtcdDataError(f"value at {self.store.key(keys.JOB)} says the job is {view.job.get('state')!r:.40} "
                                f"but its master ran it as {self.job_state}: it was written by someone else")

    def _fail_on_bad_record(self, error: EtcdDataError) -> int:
        """A job-level record reads back malformed: the job ends Failed, the key named in the reason."""
        self.fail_reason = str(error)
        self._log(f"error: {error}; the job fails")
        self._stop_workers()
        return self._finish(JobState.FAILED)

    def _final_state(self, view: JobView) -> str:
        """Every worker has exited: Succeeded only if every planned slice is committed (the counts are
        the datasets' validated completion) and none failed."""
        if view.failed:
            self.fail_reason = f"{view.failed} slice(s) failed"
            return JobState.FAILED
        if view.datasets and not view.all_complete:
            self.fail_reason = (f"all workers exited but {view.total - view.done} slice(s) are not committed "
                                f"(re-run with --job-id {self.opts.job_id} to resume)")
            return JobState.FAILED
        bad = [h for h in self.history if h.get("error")]
        if not view.datasets and bad:
            self.fail_reason = f"worker {bad[-1]['worker']} {bad[-1]['error']}"
            return JobState.FAILED
        return JobState.SUCCEEDED

    def _finish(self, state: str) -> int:
        """The one way a job ends: publish (if it may have succeeded), report, record, summarise."""
        view = self._last_view()
        if state == JobState.SUCCEEDED or (state == JobState.FAILED and view.all_complete):
            state = self._finalize(state, view)
        report = self._report(state, view)
        self.state.write_json(self.state.report, report)
        if not self.opts.join_only:
            self._write_job(state, ended=time.time(), reason=self.fail_reason)
        elif state == JobState.FAILED and self.fail_reason:
            self._tell_master_failed()
        self.job_state = state
        if self.display is not None:
            self.display.close()  # the live line goes first: the summary must not be glued to it
        lines = reporting.summary_lines(report, self.state.report)
        lines[1:1] = runs.summary_lines(report)  # a resumed job: what all its runs add up to
        for line in lines:
            print(line, file=self.out, flush=True)
        return EXIT_CODES[state]

    def _tell_master_failed(self) -> None:
        """A joiner's policy failed the job: the master (maybe with no worker of its own) must end it."""
        from aimaster.master import control

        try:
            control.request_fail(self.store, self.fail_reason, self.session.worker_id)
        except AimasterError as e:
            print(f"aimaster: could not tell the job's master that the job failed: {e}", file=self.out, flush=True)

    def _last_view(self) -> JobView:
        """The view to end on: a job failing for a malformed record, or with etcd gone, still gets
        its report (from what can be read; the reason says what could not)."""
        try:
            return self._view()
        except EtcdDataError:
            return self._view(strict=False)
        except AimasterError as e:  # etcd out of reach: writing the job record will fail too
            return JobView(self.opts.job_id, dict(self.job_record), ignored=[str(e)])

    def _finalize(self, state: str, view: JobView, patience: float = 300.0) -> str:
        """Publish every dataset's committed outputs (idempotent). A worker may be doing it right
        now: then wait while its ``finalizing`` key lives. A job whose outputs are not all published
        did not succeed. Every sink kind is rebuilt here on first use (aimaster.plugins): the master
        may be the one to finalize a dataset (when the last slice ended by failing, no worker saw the
        dataset complete)."""
        for d in view.datasets:
            ds = self._dataset(d.ds_id)
            if ds is None:
                continue
            deadline = time.monotonic() + patience
            try:
                while not ds.finalize():
                    if time.monotonic() > deadline:
                        raise JobError(f"dataset {d.ds_id} was still being finalized by another process "
                                       f"after {patience:.0f}s")
                    time.sleep(0.2)
            except AimasterError as e:
                self._log(f"error: finalizing dataset {d.ds_id} failed: {e}")
                if state == JobState.SUCCEEDED:
                    self.fail_reason = f"finalizing dataset {d.ds_id} failed: {e}"
                    state = JobState.FAILED
        return state

    def _report(self, state: str, view: JobView) -> Dict[str, Any]:
        run = reporting.RunRecord(
            self.opts.job_id, self.opts.command, self.started, self.generation, self.fail_reason,
            self.relaunches, self.replaced, self.adopted, self.fleet.launched if self.fleet else 0,
            self.guard.restarts if self.guard else 0, self.history,
            {"started": self.fleet.spares_launched, "used": self.fleet.spares_used} if self.fleet else {})
        stats = {wid: info.stats for wid, info in self.watch.workers.items()} if self.watch else {}
        previous = None if self.opts.join_only else self.state.read_json(self.state.report)
        return reporting.assemble(run, state, view, self._dataset, stats, previous,
                                  carry_runs=not self.opts.join_only)
