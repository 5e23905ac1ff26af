"""The slice row writer in a child process, so a compute-bound loop overlaps with table writing.

The parent keeps the :class:`~aimaster.io.tables.slice_writer.SliceRowWriter` API and ships rows to a
child process that runs the real one. Design choices, each for a failure it prevents:

* **A fresh interpreter, not multiprocessing's spawn.** Spawn re-imports the parent's ``__main__``
  in the child, and PAI ElasticBatch's inference scripts have no ``if __name__ == "__main__"`` guard: the
  child would run the user's whole program again. The child is ``python -c`` importing only this
  module, talking over two inherited pipe descriptors (and fork is unsafe after CUDA or threads).
* **Two one-way pipes, no shared locks.** A ``multiprocessing.Queue`` shares locks and a feeder
  thread with the child; a child SIGKILLed at the wrong moment leaves them held and the parent hangs
  (also at interpreter exit). With plain pipes, a dead child closes its ends, so the parent's next
  send fails with a broken pipe and its next poll sees EOF: the failure is always noticed.
* **Bounded by rows, with acknowledgements.** Rows travel in chunks of about ``buffer_size / 2``;
  the child acknowledges each chunk once it is staged, and the parent never has more than
  ``buffer_size`` unacknowledged rows in flight. Memory stays bounded and a slow writer slows the
  producer instead of growing a queue.
* **Every wait watches the child.** Waiting for an acknowledgement or a staged ref polls with a short
  timeout and checks that the child is alive, so a crash (even SIGKILL) becomes a
  :class:`~aimaster.errors.TableIOError` on the next call, never a hang, and rows are never dropped
  silently: ``finish_slice`` returns a ref only after the child made the slice durable.
* **Slice boundaries do not stop the parent.** ``begin`` and ``finish`` are asynchronous:
  :meth:`SubprocessSliceRowWriter.finish_slice_async` queues the finish and returns, the child
  stages the slice while the parent computes the next one, and the staged ref comes back in order
  (:meth:`~SubprocessSliceRowWriter.poll_finished`). The table client commits the slice only then,
  so exactly-once is kept and the parent never waits for the child to drain at a slice boundary.
* **Errors keep their type.** A SchemaError found in the child is raised in the parent as a
  SchemaError, at the parent's next call (writes are asynchronous); the slice is then aborted.
* **The child ignores SIGINT**: Ctrl-C is the parent's to handle; it closes the writer.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import aimaster.errors as errors_module
from aimaster.data.outputs import StagedRef
from aimaster.errors import AimasterError, SchemaError, TableIOError
from aimaster.io.tables.base import StageLost, TableSink
from aimaster.io.tables.rows import check_row, normalize_rows

_POLL_S = 0.05
_START_TIMEOUT_S = 120.0
_CLOSE_TIMEOUT_S = 30.0
_MAX_CHUNK_ROWS = 16384
MAX_FINISHING = 4
_PIPE_BYTES = 1 << 20


def _array_batch_shape(values: Any) -> Optional[Tuple[int, int]]:
    """``(rows, columns)`` of a batch that can travel as numpy arrays -- a 2-D array, or a tuple of
    equally long 1-D arrays (what a TF session returns for a batch) -- else None."""
    np = sys.modules.get("numpy")
    if np is None:
        return None  # nobody imported numpy: the values cannot be numpy arrays
    if isinstance(values, np.ndarray):
        return (values.shape[0], values.shape[1]) if values.ndim == 2 else None
    if isinstance(values, tuple) and values and all(isinstance(v, np.ndarray) and v.ndim == 1 for v in values):
        lengths = {len(v) for v in values}
        return (lengths.pop(), len(values)) if len(lengths) == 1 else None
    return None


def _dumps(message: Any) -> memoryview:
    """Pickle a command for the child without the memo: rows are flat tuples that share nothing
    worth deduplicating, and skipping the memo takes a quarter off the parent's pickling time."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(message)
    return buffer.getbuffer()


def _widen_pipe(fd: int) -> None:
    """Let the command pipe hold a whole buffer of rows (Linux: 64 KiB by default, up to 1 MiB
    unprivileged), so the parent's sends do not block while the child is busy staging a slice."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or capped lower by fs.pipe-max-size: the default size works, more slowly


def _error_message(exc: BaseException) -> Tuple[str, str]:
    return type(exc).__name__, str(exc)


def _rebuild_error(name: str, message: str) -> BaseException:
    cls = getattr(errors_module, name, None) or (StageLost if name == "StageLost" else None)
    if isinstance(cls, type) and issubclass(cls, AimasterError):
        return cls(message)
    if name in ("ValueError", "TypeError"):
        return {"ValueError": ValueError, "TypeError": TypeError}[name](message)
    return TableIOError(f"table writer subprocess failed: {name}: {message}")


def _child_entry() -> None:
    """``python -c`` entry point of the child: ``argv`` holds the two pipe descriptors."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands = Connection(int(sys.argv[1]), writable=False)
    results = Connection(int(sys.argv[2]), readable=False)
    try:
        description, filter_value = pickle.loads(commands.recv_bytes())
    except (EOFError, OSError):
        return
    try:
        _child_main(description, filter_value, commands, results)
    finally:
        # Everything the parent was told is durable is on disk (fsynced) already; skipping the
        # interpreter's teardown (pyarrow's among it) makes the parent's close() quick.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(0)


def _child_main(description: Mapping[str, Any], filter_value: Any, commands, results) -> None:
    """The child: a SliceRowWriter driven by the parent's commands.

    Messages to the parent: ``("ack", n)`` for each chunk of rows; ``("error", seq, name, message)``
    when a chunk or a ``begin`` failed (the slice, numbered ``seq`` by its ``begin``, is then
    aborted); exactly one ``("staged", ok, value)`` for every ``finish``, in order; and exactly one
    ``("reply", ok, value)`` for ``abort`` and ``close``, which the parent waits for.
    """
    from aimaster.io.tables.slice_writer import SliceRowWriter

    try:
        writer = SliceRowWriter(description, filter_value)
        schema = writer.sink.schema
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        results.send(("reply", False, _error_message(e)))
        return
    results.send(("reply", True, [c.name for c in schema] if schema is not None else None))
    results = _LockedSender(results)  # the finisher thread sends too
    finisher = _Finisher(results.send)
    broken: Optional[Tuple[str, str]] = None
    seq = 0  # the parent's number for the slice being written, echoed in error messages
    try:
        while True:
            try:
                message = pickle.loads(commands.recv_bytes())
            except (EOFError, OSError):
                return  # the parent is gone: nothing of the open slice was committed
            op = message[0]
            if op == "rows":  # ("rows", row tuples or numpy arrays, col_indices, row count)
                if broken is None:
                    try:
                        writer.write(message[1], message[2])
                    except BaseException as e:  # noqa: BLE001
                        broken = _error_message(e)
                        writer.abort_slice()
                        results.send(("error", seq) + broken)
                results.send(("ack", message[3]))
            elif op == "begin":
                # Asynchronous: the parent goes on writing rows; a failure is reported as an error
                # and the slice's finish then fails.
                broken = None
                seq = message[3]
                writer.abort_slice()
                try:
                    writer.begin_slice(message[1], message[2], message[4] if len(message) > 4 else None)
                except BaseException as e:  # noqa: BLE001
                    broken = _error_message(e)
                    results.send(("error", seq) + broken)
            elif op == "finish":
                if broken is not None:
                    finisher.fail(("TableIOError", f"slice aborted by an earlier error: {broken[1]}"))
                    broken = None
                else:
                    try:
                        finisher.commit(writer.detach_slice())
                    except BaseException as e:  # noqa: BLE001
                        finisher.fail(_error_message(e))
            elif op == "abort":
                broken = None
                _reply(results, writer.abort_slice)
            elif op == "close":
                finisher.stop()  # every finished slice answered before the reply
                writer.close()
                results.send(("reply", True, None))
                return
    finally:
        writer.close()


class _LockedSender:
    """A connection's ``send`` for two threads."""

    def __init__(self, connection: Connection):
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self._connection.send(message)


class _Finisher:
    """Commits finished slices' stages on a thread of its own, in order, answering each with one
    ``("staged", ok, value)``.

    A stage's commit can be the slow part of a slice -- a MaxCompute block is uploaded whole, at
    commit, so that it can be retried whole -- and done on the command loop it would stop the child
    from taking the next slice's rows meanwhile, which stops the parent once the buffer is full.
    At most MAX_FINISHING stages wait here: the parent has no more finishes outstanding.
    """

    def __init__(self, send: Callable[[tuple], None]):
        self._send = send
        self._queue: queue.Queue[Tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="aimaster-stage-commit", daemon=True)
        self._thread.start()

    def commit(self, stage: Any) -> None:
        self._queue.put(("stage", stage))

    def fail(self, error: Tuple[str, str]) -> None:
        self._queue.put(("error", error))

    def stop(self) -> None:
        self._queue.put(("stop", None))
        self._thread.join()

    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            if kind == "stop":
                return
            if kind == "error":
                self._send(("staged", False, item))
                continue
            try:
                ref = item.commit()
            except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
                try:
                    item.abort()
                except Exception:  # noqa: BLE001 - the commit's error is the one to report
                    pass
                self._send(("staged", False, _error_message(e)))
            else:
                self._send(("staged", True, ref))


def _reply(results, func, *args) -> None:
    try:
        value = func(*args)
    except BaseException as e:  # noqa: BLE001
        results.send(("reply", False, _error_message(e)))
    else:
        results.send(("reply", True, value))


class SubprocessSliceRowWriter:
    """:class:`SliceRowWriter`'s API, with the staging done in a spawned child process.

    ``sink`` is a table sink or its ``describe()`` dict; ``buffer_size`` bounds the rows in flight.
    The constructor waits until the child has opened the sink, so a missing output table fails here.
    """

    def __init__(self, sink: Union[TableSink, Mapping[str, Any]], buffer_size: int, filter_value: Any = None):
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        self.description = dict(sink.describe() if isinstance(sink, TableSink) else sink)
        self.buffer_size = int(buffer_size)
        # Two chunks fit in the buffer: the child stages one while the next one travels.
        self.chunk_rows = max(1, min(self.buffer_size // 2, _MAX_CHUNK_ROWS))
        self._pending: List[Tuple[Any, ...]] = []
        self._pending_indices: Optional[Tuple[int, ...]] = None
        self._in_flight: List[int] = []
        self._dead: Optional[str] = None
        self._slice: Optional[str] = None
        self._seq = 0  # numbers each begin_slice; the child tags a slice's errors with it
        self._slice_errors: Dict[int, BaseException] = {}  # the first error of each slice, by seq
        self._reported: set = set()  # seqs whose error a write() call has raised already
        self._finishing: Deque[Tuple[int, str]] = collections.deque()  # (seq, slice) sent "finish"
        self._finished: List[Tuple[str, bool, Any]] = []  # (slice, ok, ref or error), in order
        self._closed = False
        cmd_read, cmd_write = os.pipe()
        res_read, res_write = os.pipe()
        _widen_pipe(cmd_write)
        env = dict(os.environ)
        # The child must import this very aimaster, even when the parent found it on a sys.path
        # entry of its own (a source checkout, say).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(errors_module.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from aimaster.io.tables.writer_process import _child_entry; _child_entry()",
                 str(cmd_read), str(res_write)],
                pass_fds=(cmd_read, res_write), stdin=subprocess.DEVNULL, env=env)
        except BaseException:
            os.close(cmd_write)
            os.close(res_read)
            raise
        finally:
            # Our copies of the child's ends must go, or a dead child would never look dead (EOF/EPIPE).
            os.close(cmd_read)
            os.close(res_write)
        self._commands = Connection(cmd_write, readable=False)
        self._results = Connection(res_read, writable=False)
        # Connection.poll builds a selector on every call (tens of microseconds); write() checks
        # for messages on every call, so one poll object is kept instead.
        self._poller = select.poll()
        self._poller.register(res_read, select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            self._send((self.description, filter_value))
            self.column_names: Optional[List[str]] = self._reply(timeout=_START_TIMEOUT_S)
        except BaseException:
            self._closed = True
            self._stop()
            raise

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid

    # --- the SliceRowWriter API ------------------------------------------------------------------
    def begin_slice(self, slice_id: str, attempt: str, options: Optional[Mapping[str, Any]] = None) -> None:
        self._check_usable()
        if self._slice is not None:
            raise ValueError(f"slice {self._slice} is still being written; finish_slice() first")
        # No reply is awaited: the child may still be staging the previous slice. A failure to open
        # the stage is raised at the next call and fails this slice's finish.
        self._seq += 1
        self._send(("begin", str(slice_id), str(attempt), self._seq, dict(options or {})))
        self._slice = str(slice_id)

    def write(self, values: Any, col_indices: Optional[Sequence[int]] = None) -> int:
        """Queue rows for the child; returns how many were queued (filtering happens in the child).

        Shape errors (row length, column index) raise here; type errors are found by the child and
        raised at the next call.
        """
        self._check_usable()
        if self._slice is None:
            raise ValueError("write() before begin_slice()")
        self._raise_slice_error()
        indices = None if col_indices is None else tuple(int(i) for i in col_indices)
        shape = _array_batch_shape(values)
        if shape is not None:
            return self._write_arrays(values, shape, indices)
        rows = normalize_rows(values)
        self._check_shape(rows, indices)
        if self._pending and indices != self._pending_indices:
            self._flush()
        self._pending_indices = indices
        # The parent's share of the work must stay small for the child to hide the writing: rows go
        # to the child as they are, in chunks cut in C loops (slices, extend), never one Python step
        # per row (pickling row tuples costs the parent less than transposing them to columns
        # first; the child, on its own core, transposes).
        rows = rows if isinstance(rows, list) else list(rows)
        start = 0
        if not self._pending:
            # Whole chunks are sent straight from the caller's list, pickled before this returns.
            while len(rows) - start >= self.chunk_rows:
                self._send_rows(rows[start:start + self.chunk_rows], self.chunk_rows)
                start += self.chunk_rows
        if start < len(rows):
            # A remainder waits for more rows. tuple() copies a row given as a list (the caller may
            # reuse it before it is sent) and is free for a tuple.
            try:
                tail = list(map(tuple, rows[start:] if start else rows))  # all or nothing of this call
            except TypeError:
                for i, row in enumerate(rows):
                    check_row(i, row, self.description.get("url", "the output table"))
                raise
            self._pending.extend(tail)
            while len(self._pending) >= self.chunk_rows:
                rest = self._pending[self.chunk_rows:]
                self._send_rows(self._pending[:self.chunk_rows], self.chunk_rows)
                self._pending = rest
        return len(rows)

    def finish_slice(self) -> StagedRef:
        """Flush, and return the staged ref once the child has made the slice durable."""
        sid = self.finish_slice_async()
        while True:
            for i, (done_sid, ok, value) in enumerate(self._finished):
                if done_sid == sid:
                    del self._finished[i]
                    if ok:
                        return value
                    raise value
            self._handle(self._next_message())

    def finish_slice_async(self) -> str:
        """Flush and queue the slice's finish without waiting; returns the slice id.

        Its outcome comes back from :meth:`poll_finished`. At most ``MAX_FINISHING`` finishes are
        outstanding (each holds a claim the job waits for); beyond that this waits for the oldest.
        """
        self._check_usable()
        if self._slice is None:
            raise ValueError("finish_slice() before begin_slice()")
        self._flush()
        sid, self._slice = self._slice, None
        self._send(("finish",))
        self._finishing.append((self._seq, sid))
        while len(self._finishing) > MAX_FINISHING:
            self._handle(self._next_message())
        return sid

    def poll_finished(self, block: bool = False) -> List[Tuple[str, bool, Any]]:
        """The finishes the child has answered, in order: ``(slice_id, True, ref)`` or
        ``(slice_id, False, exception)``. ``block``: wait until every queued finish is answered.

        Raises TableIOError if the child died (the unanswered slices were not staged).
        """
        if self._dead is not None:
            raise TableIOError(self._dead)
        self._drain()
        while block and self._finishing:
            self._handle(self._next_message())
        done, self._finished = self._finished, []
        return done

    def abort_slice(self) -> None:
        """Throw away the slice being written."""
        self._check_usable()
        self._abort_in_child()

    def close(self) -> None:
        """Stop the child (an unfinished slice is aborted).

        Raises TableIOError if the child died and no earlier call reported it; a death already
        reported is not raised again (a ``with`` block keeps the first error).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._dead is None:
                self._send(("close",))
                self._reply(timeout=_CLOSE_TIMEOUT_S)
        except (AimasterError, ValueError, TypeError):
            if self._dead is not None:
                raise
        finally:
            self._stop()

    def __enter__(self) -> SubprocessSliceRowWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------------
    def _stop(self) -> None:
        try:
            self._proc.wait(timeout=_CLOSE_TIMEOUT_S if self._dead is None else 1.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._commands.close()
        self._results.close()

    def _check_usable(self) -> None:
        if self._dead is not None:
            raise TableIOError(self._dead)
        if self._closed:
            raise ValueError("the subprocess slice row writer is closed")
        self._drain()

    def _raise_slice_error(self) -> None:
        """Raise, once, the error the child found in the open slice's rows (writes are asynchronous,
        so it surfaces at the next call). The child has dropped the slice: its finish fails too."""
        seq = self._seq
        if self._slice is not None and seq in self._slice_errors and seq not in self._reported:
            self._reported.add(seq)
            raise self._slice_errors[seq]

    def _abort_in_child(self) -> None:
        self._pending = []
        if self._slice is not None:
            self._slice = None
            self._send(("abort",))
            self._reply()
            self._slice_errors.pop(self._seq, None)
            self._reported.discard(self._seq)

    def _check_shape(self, rows: Sequence[Sequence[Any]], indices: Optional[Tuple[int, ...]]) -> None:
        """The checks that fail at the offending call: column indices, and the shape of the first and
        last rows (a call's rows nearly always share one shape).

        Every row is checked again by the child before anything of the chunk is staged, so a bad
        row in the middle is raised at the next call and its slice never commits; checking all of
        them here too would cost the parent, whose time is what the child is there to save.
        """
        url = self.description.get("url", "the output table")
        width = self._filled_columns(indices)
        for n in sorted({0, len(rows) - 1}) if rows else ():
            row = rows[n]
            check_row(n, row, url)
            if width is not None and len(row) != width:
                raise SchemaError(f"row {n} written to {url} has {len(row)} values but {width} "
                                  "columns are being filled")

    def _filled_columns(self, indices: Optional[Tuple[int, ...]]) -> Optional[int]:
        """How many values each row must have (None: unknown until the child sees the schema);
        raises SchemaError for a column index out of range."""
        names = self.column_names
        if indices is not None and names is not None:
            for i in indices:
                if not 0 <= i < len(names):
                    url = self.description.get("url", "the output table")
                    raise SchemaError(f"column index {i} is out of range for {url}, which has {len(names)} columns")
        return len(indices) if indices is not None else (len(names) if names is not None else None)

    def _flush(self) -> None:
        if self._pending:
            chunk, self._pending = self._pending, []
            self._send_rows(chunk, len(chunk))

    def _write_arrays(self, values: Any, shape: Tuple[int, int], indices: Optional[Tuple[int, ...]]) -> int:
        """Send numpy batches as arrays: pickling an array is a copy of its buffer, so the parent's
        cost per row all but vanishes (the child turns them into rows)."""
        n, width = shape
        expected = self._filled_columns(indices)
        if n and expected is not None and width != expected:
            raise SchemaError(f"rows written to {self.description.get('url', 'the output table')} have {width} "
                              f"values but {expected} columns are being filled")
        self._flush()
        self._pending_indices = indices
        for start in range(0, n, self.chunk_rows):
            stop = min(n, start + self.chunk_rows)
            part = values[start:stop] if not isinstance(values, tuple) else tuple(c[start:stop] for c in values)
            self._send_rows(part, stop - start)
        return n

    def _send_rows(self, chunk: Any, n: int) -> None:
        """Send ``n`` rows once the rows in flight leave room for them (acknowledgements free room)."""
        while self._in_flight and sum(self._in_flight) + n > self.buffer_size:
            self._handle(self._next_message())
        self._send(("rows", chunk, self._pending_indices, n))
        self._in_flight.append(n)

    def _send(self, message: tuple) -> None:
        try:
            self._commands.send_bytes(_dumps(message))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._die()

    def _handle(self, message: tuple) -> None:
        """Account for an acknowledgement, or keep the first asynchronous error for the next call."""
        if message[0] == "ack":
            if self._in_flight:
                self._in_flight.pop(0)
        elif message[0] == "staged":
            _, ok, value = message
            seq, sid = self._finishing.popleft() if self._finishing else (0, "?")
            error = self._slice_errors.pop(seq, None)
            self._reported.discard(seq)
            if not ok:
                # The root cause (a row's type error, say) reported earlier is the better message.
                value = error or _rebuild_error(*value)
            self._finished.append((sid, ok, value))
        elif message[0] == "error":
            self._slice_errors.setdefault(message[1], _rebuild_error(message[2], message[3]))

    def _readable(self, timeout: float) -> bool:
        """Whether a message (or EOF: the child is gone) is waiting, within ``timeout`` seconds."""
        return bool(self._poller.poll(timeout * 1000.0))

    def _drain(self) -> None:
        """Take every message already waiting (acks, asynchronous errors) without blocking."""
        try:
            while self._readable(0):
                self._handle(self._results.recv())
        except (EOFError, OSError):
            self._die()

    def _next_message(self, timeout: Optional[float] = None) -> tuple:
        """The child's next message; raises TableIOError when it died or stays silent past timeout."""
        waited = 0.0
        while True:
            try:
                if self._readable(_POLL_S):
                    return self._results.recv()
            except (EOFError, OSError):
                self._die()
            if self._proc.poll() is not None and not self._readable(0):
                self._die()
            waited += _POLL_S
            if timeout is not None and waited >= timeout:
                raise TableIOError(f"table writer subprocess (pid {self.pid}) did not answer in {timeout:.0f}s")

    def _reply(self, timeout: Optional[float] = None) -> Any:
        """Wait for the reply to the last synchronous command; the root-cause error wins."""
        while True:
            message = self._next_message(timeout)
            if message[0] != "reply":
                self._handle(message)
                continue
            _, ok, value = message
            if ok:
                return value
            raise _rebuild_error(*value)

    def _death_message(self) -> str:
        code = self._proc.poll()
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        busy = [sid for _, sid in self._finishing] + ([self._slice] if self._slice else [])
        where = f" while writing slice {', '.join(busy)}" if busy else ""
        return (f"table writer subprocess (pid {self.pid}) {how}{where}; "
                "rows not yet returned in a staged ref were not written")

    def _die(self) -> None:
        if self._dead is None:
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            self._dead = self._death_message()
        raise TableIOError(self._dead)
