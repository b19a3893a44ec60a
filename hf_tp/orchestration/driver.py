"""TPModel: the driver-side handle that owns, feeds and supervises the worker processes.

Workers are fresh interpreters (``python -m hf_tp.orchestration.worker``), started like the
multiprocessing "spawn" context starts them but without re-importing the user's script, so a
plain script with no ``if __name__ == "__main__"`` guard, and a notebook, both work.
A receiver thread drains every worker's connection: heartbeats update the health table, replies
and streamed tokens go to one queue. Each call waits on that queue and, between messages, checks
for dead processes, stale heartbeats and ranks making no progress, so a failure surfaces as a
WorkerError within ``timeout_s`` instead of a hang.
"""

from __future__ import annotations

import atexit
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Listener, wait

import torch

from ..errors import WorkerError
from .protocol import (CANCEL, CANCELLED, ERROR, FORWARD, GENERATE, HEARTBEAT, LOAD, MEMORY, OK, SAVE, SHUTDOWN, STREAM,
                       STREAMER, pack, rebuild_exception, recv, send, to_cpu)
from .sockets import make_socket_folder
from .surface import TransformersSurface

_LIVE_HANDLES: "weakref.WeakSet[TPModel]" = weakref.WeakSet()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shutdown_all() -> None:
    for handle in list(_LIVE_HANDLES):
        handle.shutdown()


atexit.register(_shutdown_all)



def _refuse_cache(what: str, kwargs: dict, use_cache_too: bool) -> None:
    """A KV cache cannot cross to the driver: it lives split across the workers. Transformers would
    return or fill one; dropping it silently would make a hand-written decode loop feed the next token
    with no context and get wrong logits."""
    passed = [k for k in ("past_key_values", "cache") if kwargs.get(k) is not None]
    if use_cache_too and kwargs.get("use_cache") is True:
        passed.append("use_cache=True")
    if passed:
        raise ValueError(
            f"{what} on an hf_tp.TPModel got {', '.join(passed)}, but the handle keeps no KV cache between calls "
            "(each rank holds its slice of it in its worker process), so none can be passed in or returned. "
            "Use model.generate(...) to decode, or call model(...) on the whole sequence without a cache.")


class TPModel(TransformersSurface):
    """A tensor-parallel model served by ``tp_size`` worker processes.

    ``generate`` and ``__call__`` take and return CPU tensors, with Transformers' meaning. What
    pipelines and scripts read off a Transformers model is in TransformersSurface (surface.py); the
    handle's class is named after the architecture it serves (``LlamaForCausalLM``), as
    ``transformers.pipeline`` checks that name, and is a subclass of TPModel.
    ``memory()`` and ``health()`` return one dict per rank. ``hf_tp_plan`` is the sharding plan the workers
    split the model by (plain data: ``print(model.hf_tp_plan.describe())``), as on a launcher's model. Use as a context manager or call
    ``shutdown()``; workers also stop when this process exits, however it exits.
    """

    def __init__(self, spec: dict, config, generation_config, timeout_s: float = 30.0,
                 startup_timeout_s: float = 900.0, auto_restart: bool = False, plan=None):
        self.spec = spec
        # Computed by the driver from the same config, policy and tp_size as every worker's (they plan again
        # from the same inputs): plain data, so the handle answers without asking them.
        self.hf_tp_plan = plan
        self.tp_size = spec["tp_size"]
        self.config, self.generation_config = config, generation_config
        self.timeout_s, self.startup_timeout_s, self.auto_restart = timeout_s, startup_timeout_s, auto_restart
        self._procs: list[subprocess.Popen] = []
        self._conns: list = []
        self._lock = threading.Lock()  # one call at a time: the ranks run in lockstep
        self._state = "stopped"
        self._start()
        _LIVE_HANDLES.add(self)

    # ---------------------------------------------------------------- lifecycle
    def _start(self) -> None:
        self._closing, self._call_id = False, 0
        self.spec["port"] = _free_port()  # a fresh rendezvous port for every start (restart included)
        self._tmp = make_socket_folder()  # 0700: only this user can reach the socket
        address = os.path.join(self._tmp, "driver.sock")
        authkey = secrets.token_bytes(32)
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
        self._queue: queue.Queue = queue.Queue()
        self._heartbeat = [time.time()] * self.tp_size
        self._progress = [time.time()] * self.tp_size
        self._compiling: list[float | None] = [None] * self.tp_size  # since when each rank compiles
        self._marks: list[tuple[int, int]] = [(0, 0)] * self.tp_size  # (call id, progress marks in it): progress.py
        self._compile_seen = [0.0]  # when a heartbeat last said some rank was compiling
        self._errors: list[str | None] = [None] * self.tp_size
        # Per start: a receiver thread left over from before a restart must not feed the new queue.
        self._stopped = threading.Event()
        env = {**os.environ, **self.spec["tp_config"].worker_env}  # NVLink multicast off by default (TPConfig)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        self._procs, self._conns = [], []
        try:
            self._spawn_and_load(listener, address, authkey, env)
        except BaseException:
            # Ctrl-C while loading, or a failure: no worker may outlive a from_pretrained/restart that
            # did not return a working model.
            listener.close()
            self._stopped.set()
            self._kill_all()
            for conn in self._conns:
                if conn is not None:
                    conn.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._state = "stopped"
            raise

    def _spawn_and_load(self, listener, address: str, authkey: bytes, env: dict) -> None:
        for rank in range(self.tp_size):
            # Own session: a terminal's Ctrl-C goes to the driver's process group only. The driver then
            # cancels the call on every rank at the same step, instead of each rank dying mid-collective.
            proc = subprocess.Popen([sys.executable, "-m", "hf_tp.orchestration.worker", address, str(rank)],
                                    stdin=subprocess.PIPE, env=env, start_new_session=True)
            proc.stdin.write((authkey.hex() + "\n").encode())
            proc.stdin.close()
            self._procs.append(proc)
        # Accept in a thread so a worker that dies before connecting cannot block us forever.
        conns: dict[int, object] = {}

        def accept():
            for _ in range(self.tp_size):
                try:
                    conns[len(conns)] = listener.accept()
                except OSError:
                    return

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        deadline = time.time() + 120
        while acceptor.is_alive() and time.time() < deadline:
            dead = [r for r, p in enumerate(self._procs) if p.poll() is not None]
            if dead:
                break
            acceptor.join(0.1)
        listener.close()
        if len(conns) < self.tp_size:
            raise WorkerError(f"only {len(conns)} of {self.tp_size} workers connected: {self._exit_summary()}")
        # Connections arrive in any order; each worker's first message is its rank.
        self._conns = [None] * self.tp_size
        for conn in conns.values():
            rank = recv(conn)
            self._conns[rank] = conn
        self._receiver = threading.Thread(target=self._receive, args=(self._conns, self._queue, self._stopped),
                                          daemon=True, name="hf_tp-receiver")
        # The watchdog's clocks start now that every worker is up: starting Python and importing torch
        # in tp_size processes at once takes longer than timeout_s on a busy host.
        now = time.time()
        self._heartbeat[:] = [now] * self.tp_size
        self._progress[:] = [now] * self.tp_size
        self._receiver.start()
        self._state = "loading"
        self._call(LOAD, self.spec, timeout_s=self.startup_timeout_s, what="loading the model")
        self._state = "ready"

    def _receive(self, connections, messages: queue.Queue, stopped: threading.Event) -> None:
        conns = {conn: rank for rank, conn in enumerate(connections)}
        heartbeat, progress = self._heartbeat, self._progress  # this start's tables
        compiling, compile_seen, marks = self._compiling, self._compile_seen, self._marks
        while conns and not stopped.is_set():
            try:
                ready = wait(list(conns), timeout=0.2)
            except (OSError, ValueError):  # connections closed under us by shutdown()
                return
            for conn in ready:
                rank = conns[conn]
                try:
                    message = recv(conn)
                except (EOFError, OSError) as exc:
                    del conns[conn]
                    messages.put((rank, ("closed", f"connection closed: {type(exc).__name__}")))
                    continue
                except Exception as exc:  # unreadable reply: report it, rather than die silently
                    del conns[conn]
                    messages.put((rank, ("closed", f"sent a message the driver cannot read ({exc!r})")))
                    continue
                if message[0] == HEARTBEAT:
                    heartbeat[rank], progress[rank], compiling[rank] = message[1], message[2], message[3]
                    marks[rank] = (message[4], message[5])
                    if compiling[rank] is not None:
                        compile_seen[0] = time.time()
                else:
                    messages.put((rank, message))

    def _kill_all(self, failed: int | None = None) -> None:
        """Stop every worker now. The failed rank (dead, frozen or stuck) gets SIGKILL: it is past
        politeness. The others get SIGTERM, plus SIGCONT so that a stopped (SIGSTOP, debugger) process
        acts on it at once; only one that ignores SIGTERM waits out the 5 s grace before SIGKILL.
        That keeps a WorkerError within timeout_s of the failure, grace included."""
        for rank, proc in enumerate(self._procs):
            if proc.poll() is None:
                try:
                    if rank == failed:
                        proc.kill()
                    else:
                        proc.terminate()
                        os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:  # exited since poll()
                    pass
        deadline = time.time() + 5
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _unreachable(self, rank: int, error: OSError) -> str:
        """Why a request could not be sent to ``rank``: usually the worker died since the last call (killed
        for memory, say), which its exit status tells, as _check_alive words it."""
        proc = self._procs[rank]
        try:
            code = proc.wait(timeout=2)  # a closed connection: the process is gone or going
        except subprocess.TimeoutExpired:
            return f"could not be reached ({error})"
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"(pid {proc.pid}) {how} since the last call (the request could not be sent: {error})"

    def _exit_summary(self) -> str:
        parts = []
        for rank, proc in enumerate(self._procs):
            code = proc.poll()
            if code is not None:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                parts.append(f"rank {rank} (pid {proc.pid}) {how}")
        return "; ".join(parts) or "no worker exited"

    def shutdown(self) -> None:
        """Stop every worker (politely, then by force) and release the socket folder. Idempotent."""
        self._closing = True  # a call failing concurrently must not auto-restart what the user stopped
        self._shutdown()

    def _shutdown(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        for conn in self._conns:
            try:
                send(conn, (self._call_id + 1, SHUTDOWN, None))
            except (OSError, AttributeError):
                pass
        deadline = time.time() + 10
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        self._stopped.set()
        self._kill_all()
        for conn in self._conns:
            try:
                conn.close()
            except (OSError, AttributeError):
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)
        _LIVE_HANDLES.discard(self)

    def restart(self) -> None:
        """Stop whatever is left of the workers and start and load them again."""
        with self._lock:
            self._shutdown()
            self._start()
            _LIVE_HANDLES.add(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __del__(self):
        try:
            self.shutdown()
        except Exception:
            pass

    # ---------------------------------------------------------------- calls
    def _fail(self, rank: int, cause: str, what: str) -> WorkerError:
        self._errors[rank] = cause
        self._stopped.set()
        self._kill_all(failed=rank)
        self._state = "failed"
        error = WorkerError(f"tp rank {rank} {cause} while {what}; all workers were stopped. "
                            f"{'They were restarted.' if self.auto_restart else 'Call restart() to bring the model back.'}")
        if self.auto_restart and what != "loading the model" and not self._closing:
            self._shutdown()
            self._start()
            _LIVE_HANDLES.add(self)
        return error

    def _call(self, op: str, payload, timeout_s: float | None = None, what: str = "", streamer=None) -> object:
        """Send one request to every rank and wait for all replies, watching the workers meanwhile.

        Replies carry the id of their call: if a call was interrupted (Ctrl-C), its late replies
        are recognised and dropped, and the next call waits for its own.
        """
        if self._state not in ("ready", "loading"):
            raise WorkerError(f"the workers are {self._state}; call restart() first.")
        timeout_s = timeout_s or self.timeout_s
        what = what or f"running {op}"
        data = pack(payload, op)  # before anything is sent: an argument that cannot be pickled fails here alone
        self._call_id += 1
        call_id = self._call_id
        failures, interrupted = self._broadcast((call_id, op, data))
        if failures:
            rank = min(failures)
            raise self._fail(rank, self._unreachable(rank, failures[rank]), what) from None
        try:
            if interrupted:
                raise KeyboardInterrupt
            return self._wait(op, call_id, timeout_s, what, streamer)
        except KeyboardInterrupt:
            # Ctrl-C / "interrupt kernel": the ranks stop this call together at their next decode step
            # (cancel.py) and are then ready for the next one, whose replies carry a new id; the late
            # replies of this one are recognised by their id and dropped.
            if self._state in ("ready", "loading"):
                self._broadcast((call_id, CANCEL, None))
            raise

    def _broadcast(self, message) -> tuple[dict, bool]:
        """Send ``message`` to every rank from a helper thread, which a KeyboardInterrupt cannot stop
        half-way (signals interrupt only the main thread): every rank gets the request, or none does,
        so no rank is left alone in a collective. Returns ({rank: OSError}, whether interrupted)."""
        failures: dict[int, OSError] = {}

        def run():
            for rank, conn in enumerate(self._conns):
                try:
                    send(conn, message)
                except OSError as exc:
                    failures[rank] = exc

        sender = threading.Thread(target=run, daemon=True, name="hf_tp-send")
        sender.start()
        interrupted = False
        while sender.is_alive():
            try:
                sender.join()
            except KeyboardInterrupt:
                interrupted = True
        return failures, interrupted

    def _wait(self, op: str, call_id: int, timeout_s: float, what: str, streamer) -> dict:
        """Wait for every rank's reply to call ``call_id``, watching the workers meanwhile."""
        start = time.time()
        results: dict[int, object] = {}
        errors: dict[int, tuple] = {}
        first_error_at = None
        streamer_error = None
        while len(results) + len(errors) < self.tp_size:
            try:
                rank, message = self._queue.get(timeout=0.2)
            except queue.Empty:
                rank, message = None, None
            if message is not None:
                kind = message[0]
                if kind == "closed":
                    if rank not in results:
                        self._procs[rank].wait(timeout=5) if self._procs[rank].poll() is None else None
                        raise self._fail(rank, f"lost its connection ({message[1]}; {self._exit_summary()})", what)
                elif kind == CANCELLED or message[-1] != call_id:
                    pass  # a late reply to an interrupted call
                elif kind == OK:
                    results[rank] = message[1]
                elif kind == ERROR:
                    errors[rank] = message[1:4]
                    first_error_at = first_error_at or time.time()
                elif kind == STREAM and streamer is not None and streamer_error is None:
                    method, value = message[1]
                    try:
                        streamer.put(value) if method == "put" else streamer.end()
                    except Exception as exc:  # the user's streamer failed: finish the call, then raise it
                        streamer_error = exc
                continue
            pending = [r for r in range(self.tp_size) if r not in results and r not in errors]
            if errors and pending and time.time() - first_error_at > timeout_s:
                rank = min(errors)
                raise self._fail(rank, f"raised {errors[rank][0]}: {errors[rank][1]} alone, leaving tp ranks {pending} "
                                       "waiting in a collective", what)
            # Once a rank has reported an error, its peers waiting in a collective are the lone-error case
            # above (reported with that error at first_error_at + timeout_s), not idle ranks: otherwise a peer
            # that received the call a moment before the error arrived would be blamed first, by timing luck.
            self._check_alive(what, start, timeout_s, [] if errors else pending, call_id)
        if errors:
            rank = min(errors)
            type_name, message, trace = errors[rank]
            if op == LOAD:
                self._shutdown()
            raise rebuild_exception(type_name, message, trace, rank)
        if streamer_error is not None:
            raise streamer_error
        return results

    def _check_alive(self, what: str, start: float, timeout_s: float, pending: list[int], call_id: int = 0) -> None:
        now = time.time()
        for rank, proc in enumerate(self._procs):
            code = proc.poll()
            if code is not None:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise self._fail(rank, f"(pid {proc.pid}) {how}", what)
        for rank in range(self.tp_size):
            if now - self._heartbeat[rank] > self.timeout_s:
                raise self._fail(rank, f"(pid {self._procs[rank].pid}) sent no heartbeat for {now - self._heartbeat[rank]:.0f} s (frozen?)", what)
        for rank, since in enumerate(self._compiling):
            if since is not None and now - since > self.startup_timeout_s:
                raise self._fail(rank, f"has been compiling for {now - since:.0f} s, longer than startup_timeout_s="
                                       f"{self.startup_timeout_s:g}", what)
        # A rank finishing decoder layers (progress.py) is computing, however long the whole forward takes:
        # idle means no layer, decode step or call finished for timeout_s. A rank compiling is working, and
        # its peers may be waiting for it in a collective: while any rank compiles, and for timeout_s after,
        # no rank counts as idle.
        idle = {rank: now - max(self._progress[rank], start, self._compile_seen[0]) for rank in pending}
        stuck = [rank for rank in pending if idle[rank] > timeout_s]
        if stuck:
            # The culprit is the rank furthest behind in this call: the others wait for it in a collective.
            done = {rank: count if seen == call_id else 0 for rank, (seen, count) in enumerate(self._marks)}
            rank = min(stuck, key=lambda r: (done[r], -idle[r]))
            ahead = [r for r in pending if done[r] > done[rank]]
            why = (f"hung? tp ranks {ahead} got further in this call ({done[ahead[0]]} vs {done[rank]} progress marks: "
                   "call started, forward passes entered, decoder layers finished) and wait for it in a collective" if ahead else
                   "stuck in a collective: another rank died, hung or raised alone?")
            option = "timeout_s" if timeout_s == self.timeout_s else "startup_timeout_s"
            raise self._fail(rank, f"made no progress for {idle[rank]:.0f} s ({why}; a call that is only slow "
                                   f"finishes a decoder layer at least every {option}={timeout_s:g} s: if one layer "
                                   f"can take longer, pass a larger from_pretrained(..., {option}=...))", what)

    def generate(self, *args, **kwargs):
        """Like ``transformers`` ``generate``: tensors in (any device), CPU tensors out. ``streamer``
        objects stay here and receive tokens as the workers produce them. ``self.generation_config`` is
        the model's default generation config, as in Transformers: edits to it apply to the next call.
        Ctrl-C (KeyboardInterrupt) stops the call on every worker at its next decode step; the next
        call starts as soon as they have."""
        _refuse_cache("generate()", kwargs, use_cache_too=False)
        streamer = kwargs.pop("streamer", None)
        args, kwargs = to_cpu(args), to_cpu(kwargs)  # a pipeline on a GPU host moves inputs to cuda:0
        if streamer is not None:
            kwargs["streamer"] = STREAMER
        # A seed drawn from this process's RNG: torch.manual_seed here makes sampling reproducible.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        with self._lock:
            return self._call(GENERATE, (args, kwargs, seed, self.generation_config), what="generating",
                              streamer=streamer)[0]

    def __call__(self, *args, **kwargs):
        """The model's forward pass (stateless: no cache is kept between calls, none is returned)."""
        _refuse_cache("model(...)", kwargs, use_cache_too=True)
        args, kwargs = to_cpu(args), to_cpu(kwargs)
        with self._lock:
            return self._call(FORWARD, (args, kwargs), what="running forward")[0]

    forward = __call__

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write the unsplit checkpoint to ``save_directory`` (written by the tp-rank-0 worker, so the
        path is on this machine), as ``PreTrainedModel.save_pretrained`` writes it."""
        with self._lock:
            self._call(SAVE, (str(save_directory), kwargs), what="saving the checkpoint")

    def memory(self) -> list[dict]:
        """One dict per rank: rank, device, allocated/reserved/peak/free bytes, weights and KV-cache bytes."""
        with self._lock:
            results = self._call(MEMORY, None, what="reading memory")
        return [results[rank] for rank in range(self.tp_size)]

    def health(self) -> list[dict]:
        """One dict per rank: rank, pid, alive, heartbeat_age_s, device, error (None when healthy)."""
        now = time.time()
        device = self.spec["device"]
        return [{"rank": r, "pid": p.pid, "alive": p.poll() is None, "heartbeat_age_s": round(now - self._heartbeat[r], 3),
                 "device": f"cuda:{r}" if device.startswith("cuda") else "cpu", "error": self._errors[r]}
                for r, p in enumerate(self._procs)]

    @property
    def hf_tp_config(self):
        """The resolved hf_tp.TPConfig every worker runs with."""
        return self.spec["tp_config"]

    def __repr__(self) -> str:
        return (f"TPModel({self.spec['name_or_path']!r}, tp_size={self.tp_size}, device={self.spec['device']!r}, "
                f"state={self._state}, tp_config={self.spec['tp_config']})")
