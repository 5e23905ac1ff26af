"""Workers as Ray actors: one actor per worker, spread over the cluster's nodes.

Ray places and keeps the processes; the master keeps everything else (slices, relaunches, slow and
hung workers, early stop). An actor (:class:`WorkerActor`) runs the user's COMMAND as its subprocess
with the job's environment and buffers what it prints; the master pulls that output through Ray
(one call at a time per worker, from a thread of its own) and writes it through the usual log pump
into the job's ``logs/worker-N.out|err`` on the master's host, so ``aimaster logs`` and the failure
reports read the same files as for local workers.

The handle's ``poll()`` is the actor's ``run()`` call: it returns the command's exit status, or
fails when the actor died with its node; that death reads as an exit by SIGKILL (and a line saying
so in the worker's stderr log), so the master's fault policy relaunches the slot and Ray places the
new actor on the nodes left. SIGKILL from the master is ``ray.kill`` of the actor (it works on an
actor Ray has not placed yet too); the command dies with it (``PR_SET_PDEATHSIG``), so a dead actor
never leaves a worker behind. The launcher's ``close()`` kills every actor it made.

Every node must reach the job's etcd (``--listen`` for the embedded one, or ``--etcd``), find the
TLS files named in the worker environment at the same paths, and have aimaster and COMMAND installed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from aimaster.errors import ConfigError
from aimaster.master.launcher import LogOptions, Worker, WorkerProcess, start_pump, worker_env
from aimaster.master.launchers.base import Launcher

BUFFER_CAP = 16 * 1024 * 1024  # per stream, in the actor, should the master stop reading for a while


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerActor:
    """Runs one worker's COMMAND on a Ray node (a threaded actor: ``run`` blocks, the rest answer)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.proc: Optional[subprocess.Popen] = None
        self.out = bytearray()
        self.err = bytearray()
        self.done = False
        self.node = socket.gethostname()
        import ray

        # Asking outside Ray would start a local Ray instance: a unit test of the class itself.
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def run(self, command: List[str], env: Dict[str, str], cwd: str) -> int:
        env = dict(env)
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPUs Ray gave this actor, not the master's
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        env["AIMASTER_RAY_NODE"] = self.node_id  # which node it runs on, for the worker and its logs
        try:
            proc = subprocess.Popen(command, env=env, cwd=cwd if os.path.isdir(cwd) else None,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as e:
            with self.cond:
                self.err += f"aimaster: cannot start {command[0]!r} on Ray node {self.node}: {e}\n".encode()
                self.done = True
                self.cond.notify_all()
            return 127
        with self.cond:
            self.proc = proc
            self.cond.notify_all()
        readers = [threading.Thread(target=self._pump, args=(proc.stdout, self.out), daemon=True),
                   threading.Thread(target=self._pump, args=(proc.stderr, self.err), daemon=True)]
        for t in readers:
            t.start()
        rc = proc.wait()
        try:  # whatever it forked goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for t in readers:
            t.join(5)
        with self.cond:
            self.done = True
            self.cond.notify_all()
        return rc

    def _pump(self, stream, buf: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self.cond:
                buf += chunk
                if len(buf) > BUFFER_CAP:
                    del buf[:len(buf) - BUFFER_CAP]
                self.cond.notify_all()

    def read(self, timeout: float) -> tuple:
        """(stdout, stderr, pid, node, done): what was printed since the last call, waiting a little."""
        with self.cond:
            self.cond.wait_for(lambda: self.out or self.err or self.done, timeout)
            out, err = bytes(self.out), bytes(self.err)
            self.out.clear()
            self.err.clear()
            pid = self.proc.pid if self.proc is not None else 0
            return out, err, pid, self.node, self.done and not out and not err

    def signal(self, sig: int) -> None:
        with self.cond:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


class RayWorker(Worker):
    """The master's handle on one worker actor."""

    def __init__(self, launcher: RayLauncher, slot: int, command: Sequence[str], env: Dict[str, str],
                 log_dir: str, incarnation: int, id_suffix: str, logs: Optional[LogOptions]):
        import ray

        super().__init__()
        self._launched_as(slot, incarnation, id_suffix, log_dir)
        env = worker_env(env, self.worker_id, slot, incarnation)
        self.started = time.time()
        self._pid = 0
        self.node = ""
        self.pump, self._out_w, self._err_w = start_pump(self.worker_id, slot, incarnation, self.out_path,
                                                         self.err_path, logs or LogOptions())
        self.actor = launcher.new_actor()
        self.run_ref = self.actor.run.remote(list(command), env, os.getcwd())
        self._ray = ray
        self._forwarder = threading.Thread(target=self._forward, name=f"ray-logs-{self.worker_id}", daemon=True)
        self._forwarder.start()

    @property
    def pid(self) -> int:
        return self._pid  # on the actor's node; 0 until the actor has started it

    def _forward(self) -> None:
        try:
            while True:
                try:
                    out, err, pid, node, done = self._ray.get(self.actor.read.remote(1.0))
                except Exception as e:  # noqa: BLE001 - the actor died (its node, ray.kill): say so, stop
                    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    os.write(self._err_w, f"aimaster: Ray actor of {self.worker_id} is gone: {reason}\n".encode())
                    return
                self._pid, self.node = pid or self._pid, node
                if out:
                    os.write(self._out_w, out)
                if err:
                    os.write(self._err_w, err)
                if done:
                    return
        except OSError:
            return  # the pump is gone: nothing more can be kept
        finally:
            for fd in (self._out_w, self._err_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            ready, _ = self._ray.wait([self.run_ref], timeout=0)
            if ready:
                try:
                    rc = int(self._ray.get(self.run_ref))
                except Exception:  # noqa: BLE001 - the actor died with its node, or was killed
                    rc = -signal.SIGKILL
                self._forwarder.join(10)  # its last output is in the files before the exit is classified
                self._ray.kill(self.actor)  # nothing left behind
                self.returncode = rc
                self.ended = time.time()
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        if sig == signal.SIGKILL:
            self._ray.kill(self.actor)  # also an actor not placed yet; the command dies with it
        else:
            self.actor.signal.remote(int(sig))

    def kill_leftovers(self) -> None:
        """The actor killed what its command forked when it ended; nothing of ours runs here."""

    _flush_logs = WorkerProcess._flush_logs  # the same pump: wait for it to write the last words

    def oom_killed(self) -> Optional[bool]:
        return None  # another node's kernel: not ours to read


def _probe(address: str) -> None:
    """A HOST:PORT that nothing answers on: one line now, not a connection retried for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--launcher ray: no Ray cluster at --ray-address {address} ({e.strerror or e})")


class RayLauncher(Launcher):
    name = "ray"

    def __init__(self, address: str = "auto", cpus_per_worker: float = 1.0, gpus_per_worker: float = 0):
        try:
            import ray
        except ImportError:
            raise ConfigError("--launcher ray needs Ray: pip install 'aimaster[ray]'") from None
        if cpus_per_worker < 0 or gpus_per_worker < 0:
            raise ConfigError("--cpus-per-worker and --gpus-per-worker cannot be negative")
        if address != "auto" and "://" not in address:
            _probe(address)
        # Ray's own warnings (its token-auth notice, ...) would make a one-line error several lines.
        logging.getLogger("ray").setLevel(logging.ERROR)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--launcher ray: cannot connect to the Ray cluster at {address}: {first}") from None
        self.ray = ray
        self.address = address
        self.cpus = cpus_per_worker
        self.gpus = gpus_per_worker
        self.actor_class = ray.remote(WorkerActor)
        self.actors: List[Any] = []

    def new_actor(self):
        actor = self.actor_class.options(num_cpus=self.cpus, num_gpus=self.gpus, scheduling_strategy="SPREAD",
                                         max_restarts=0, max_concurrency=4).remote()
        self.actors.append(actor)
        return actor

    def start(self, slot, incarnation, command, env, log_dir, id_suffix="", logs=None) -> Worker:
        return RayWorker(self, slot, command, env, log_dir, incarnation, id_suffix, logs)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass
        self.actors.clear()
        self.ray.shutdown()

    def describe(self) -> str:
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return f"ray ({nodes} node(s) at {self.address}, {self.cpus:g} CPU / {self.gpus:g} GPU per worker)"
