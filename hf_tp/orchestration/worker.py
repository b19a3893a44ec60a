"""One worker process of the single-controller mode: ``python -m hf_tp.orchestration.worker ADDRESS RANK``.

It connects back to the driver (auth key read from stdin), becomes one rank of an ordinary
torch.distributed group (the same SPMD code path as under torchrun), loads its shard, and then
serves the driver's requests in lockstep with the other ranks. It exits when told to, when the
driver's connection closes, or when the driver process disappears, so it never outlives its owner.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client

from ..faults import FAULT_ENV, fault_seconds, injected_fault  # noqa: F401 (FAULT_ENV: the tests' name)
from .progress import ProgressMarks

HEARTBEAT_INTERVAL_S = 0.5

def _inject_fault(rank: int, op: str) -> None:
    """Test hook (hf_tp/faults.py): raise, hang forever, die, or spend $HF_TP_FAULT_SECONDS inside
    torch.compile's own start/end hooks, as a long compile does. Unset in normal use."""
    kind = injected_fault(rank, op)
    if kind == "raise":
        raise RuntimeError(f"injected fault on tp rank {rank} during {op}")
    if kind == "hang":
        threading.Event().wait()
    if kind == "exit":
        os._exit(17)
    if kind == "compile":
        from torch._dynamo.callback import CallbackTrigger, callback_handler

        with callback_handler.install_callbacks(CallbackTrigger.DYNAMO, "hf_tp-injected"):
            time.sleep(fault_seconds())


_CACHE_KEYS = ("cache", "past_key_values")  # the name in Transformers >= 5.2x, and before


def _cache_key(out) -> str | None:
    """The name under which a model output holds its KV cache. Looked up in keys(): on Transformers
    5.2x even ``"past_key_values" in out`` logs a deprecation warning."""
    keys = list(out.keys())
    return next((name for name in _CACHE_KEYS if name in keys), None)


def _drop_cache(out):
    """``out`` without its KV cache (device objects stay in the worker). A model output keeps its type;
    the tuple of ``return_dict=False`` keeps its positions, with None where the cache was."""
    if isinstance(out, tuple):
        from transformers.cache_utils import Cache

        return tuple(None if isinstance(value, Cache) else value for value in out)
    name = _cache_key(out)
    if name is not None:
        out[name] = None
    return out


def _generation_value(model, kwargs: dict, name: str, default):
    """The value generate() will use for generation field ``name``, by Transformers' precedence: the
    keyword, else the call's generation_config, else the model's generation_config."""
    sources = (kwargs.get(name), getattr(kwargs.get("generation_config"), name, None),
               getattr(model.generation_config, name, None))
    return next((value for value in sources if value is not None), default)


class Worker:
    def __init__(self, address: str, rank: int, authkey: bytes):
        self.rank = rank
        self.conn = Client(address, family="AF_UNIX", authkey=authkey)
        from .protocol import send

        send(self.conn, rank)  # connections are accepted in any order: say who we are first
        self.send_lock = threading.Lock()  # the heartbeat thread and the request loop share the socket
        self.progress = ProgressMarks()  # per layer, per decode step, per call: read by the heartbeat
        self.kv_cache_bytes = 0
        self.call_id = 0
        self.model = None
        self.driver_pid = os.getppid()
        self.compiling_since: float | None = None
        # Every call id up to this one was cancelled by the driver (ids only grow). Written by the reader
        # thread, read at each decode step by the serving thread: a plain int, atomic under the GIL.
        self.cancelled_through = 0
        self.requests: queue.Queue = queue.Queue()  # filled by the reader thread, served in order

    def _watch_compiles(self) -> None:
        """The first generate of a shape compiles the decode step (a minute or more for a large model,
        with no token produced meanwhile). The heartbeat says since when this rank has been compiling,
        so the driver does not take that silence for a hang (it bounds it by startup_timeout_s)."""
        try:
            from torch._dynamo.callback import on_compile_end, on_compile_start
        except ImportError:  # without the hooks, a compile longer than timeout_s reads as a hang
            return

        def started(_args=None):
            self.compiling_since = time.time()

        def ended(_args=None):
            self.compiling_since = None
            self.progress.mark()

        on_compile_start(started)
        on_compile_end(ended)

    def send(self, message) -> None:
        """Send one message; replies and streamed tokens carry the id of the call they answer."""
        from .protocol import HEARTBEAT, send

        if message[0] != HEARTBEAT:
            message = (*message, self.call_id)
        with self.send_lock:
            send(self.conn, message)

    def _heartbeat(self) -> None:
        from .protocol import HEARTBEAT

        while True:
            # A driver that vanished (SIGKILL, crash) reparents us: exit rather than linger as an orphan.
            if os.getppid() != self.driver_pid:
                os._exit(3)
            try:
                self.send((HEARTBEAT, time.time(), self.progress.time, self.compiling_since, self.call_id,
                           self.progress.count))
            except (OSError, EOFError):
                os._exit(3)
            time.sleep(HEARTBEAT_INTERVAL_S)

    def _read(self) -> None:
        """Take every message off the connection as it arrives: CANCEL and SHUTDOWN must be seen while
        the serving thread is busy in a generate. Requests queue up for the serving thread."""
        from .protocol import CANCEL, SHUTDOWN, recv

        while True:
            try:
                call_id, op, data = recv(self.conn)
            except (EOFError, OSError):
                self.requests.put(None)  # the driver closed the connection: nothing left to serve
                return
            if op == CANCEL:
                self.cancelled_through = max(self.cancelled_through, call_id)
                continue
            if op == SHUTDOWN:  # whatever is still running stops at its next step
                self.cancelled_through = max(self.cancelled_through, call_id - 1)
            self.requests.put((call_id, op, data))

    def check_cancel(self) -> None:
        """At a decode step: every rank stops here, together, when the driver cancelled this call on any
        rank (hf_tp/orchestration/cancel.py says why they must agree)."""
        from .cancel import GenerationCancelled, agree_to_stop

        if agree_to_stop(self.call_id <= self.cancelled_through, self.model.hf_tp):
            raise GenerationCancelled(f"call {self.call_id} was cancelled by the driver")

    def load(self, spec: dict):
        import torch

        from ..assembly import load_parallel_model
        from ..launch import init_spmd_group
        from .memory import preflight

        os.environ.update({"RANK": str(self.rank), "LOCAL_RANK": str(self.rank), "WORLD_SIZE": str(spec["tp_size"]),
                           "LOCAL_WORLD_SIZE": str(spec["tp_size"]), "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(spec["port"])})
        device = torch.device(spec["device"])
        if device.type == "cpu":  # ranks share the host's cores; oversubscription makes everyone slow
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec["tp_size"]))
        tp = init_spmd_group(spec["tp_size"], device, timeout_s=spec.get("collective_timeout_s"))
        preflight(spec["need_bytes"][self.rank], tp.device, spec.get("max_memory_per_gpu"), self.rank)
        self.model = load_parallel_model(spec["name_or_path"], tp, dtype=spec["dtype"], tp_config=spec["tp_config"],
                                         **spec["hf_kwargs"])
        # Each decoder layer marks progress: a forward longer than timeout_s is not taken for a hang.
        self.progress.install(self.model, self.model.hf_tp_plan.modules, self.rank)
        return {"load_s": self.model.hf_tp_load_stats.seconds, "bytes_read": self.model.hf_tp_load_stats.bytes_read}

    def generate(self, payload):
        import copy

        import torch

        from .protocol import STREAMER, to_cpu, to_device

        args, kwargs, seed, generation_config = payload
        if generation_config is not None:  # the handle's copy: edits the user made on the driver count
            self.model.generation_config = generation_config
        device = self.model.hf_tp.device
        args, kwargs = to_device(args, device), to_device(kwargs, device)
        user_streamer = kwargs.pop("streamer", None) == STREAMER
        if _generation_value(self.model, kwargs, "num_beams", 1) == 1 or user_streamer:
            # Called once per decode step outside any compiled region: the watchdog's progress mark,
            # the point where a cancelled call stops, and on rank 0 the channel to the driver's
            # streamer. generate() refuses streamers with beam search: ours stays out of it then, unless
            # the user passed one, which is refused as in Transformers (on every rank alike).
            kwargs["streamer"] = _StepStreamer(self, forward=user_streamer and self.rank == 0)
        else:  # beam search: a stopping criterion is the per-step hook that stays (see cancel.py)
            from transformers import StoppingCriteriaList

            from .cancel import CancelCriterion

            kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []),
                                                                CancelCriterion(self.check_cancel)])
        # The returned cache tells memory() what the KV cache of this call took; the user gets the
        # output type they asked for.
        wants_dict = bool(_generation_value(self.model, kwargs, "return_dict_in_generate", False))
        if "return_dict_in_generate" in kwargs or kwargs.get("generation_config") is None:
            kwargs["return_dict_in_generate"] = True
        else:  # on a copy of the call's config: a keyword beside a generation_config makes Transformers warn
            kwargs["generation_config"] = copy.deepcopy(kwargs["generation_config"])
            kwargs["generation_config"].return_dict_in_generate = True
        torch.manual_seed(seed)
        out = self.model.generate(*args, **kwargs)
        name = _cache_key(out)
        cache = out[name] if name is not None else None
        self.kv_cache_bytes = sum(t.numel() * t.element_size() for layer in getattr(cache, "layers", [])
                                  for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if torch.is_tensor(t))
        out = _drop_cache(out)  # device objects stay here
        del cache
        if self.rank != 0:
            return None
        return to_cpu(out if wants_dict else out.sequences)

    def forward(self, payload):
        import torch

        from .protocol import to_cpu, to_device

        args, kwargs = payload
        device = self.model.hf_tp.device
        if kwargs.get("return_dict") is not False:
            # The driver's call is stateless: no cache comes back, so none is built. (A tuple is left
            # to the model's default, so its items sit where Transformers puts them.)
            kwargs.setdefault("use_cache", False)
        with torch.no_grad():
            out = self.model(*to_device(args, device), **to_device(kwargs, device))
        out = _drop_cache(out)
        return to_cpu(out) if self.rank == 0 else None

    def save(self, payload):
        """Every rank joins the gather; tp rank 0 writes the unsplit checkpoint."""
        save_directory, kwargs = payload
        self.model.save_pretrained(save_directory, **kwargs)

    def memory(self, _payload):
        from .memory import memory_report

        return memory_report(self.model, self.rank, self.model.hf_tp.device, self.kv_cache_bytes)

    def serve(self) -> None:
        from .cancel import GenerationCancelled
        from .protocol import CANCELLED, ERROR, FORWARD, GENERATE, LOAD, MEMORY, OK, SAVE, SHUTDOWN, unpack

        threading.Thread(target=self._heartbeat, daemon=True, name="hf_tp-heartbeat").start()
        threading.Thread(target=self._read, daemon=True, name="hf_tp-reader").start()
        self._watch_compiles()  # after the first heartbeat: importing torch._dynamo takes seconds on a busy host
        handlers = {LOAD: self.load, GENERATE: self.generate, FORWARD: self.forward, MEMORY: self.memory,
                    SAVE: self.save}
        while True:
            request = self.requests.get()
            if request is None:
                return
            # Reset before the id changes: a heartbeat may pair the old id with 0 (the driver ignores old ids),
            # never the new id with the last call's count.
            self.progress.new_call()
            self.call_id, op, data = request
            if op == SHUTDOWN:
                self.send((OK, None))
                return
            try:
                _inject_fault(self.rank, op)
                self.progress.reached()  # this rank started serving the call: its peers may wait for it from here
                result = handlers[op](unpack(data, op))
            except GenerationCancelled:  # every rank left at the same step; the driver has moved on
                self.send((CANCELLED,))
                continue
            except Exception as exc:  # reported to the driver, which raises it as its own kind
                self.send((ERROR, type(exc).__name__, str(exc), traceback.format_exc()))
                continue
            self.progress.mark()
            self.send((OK, result))


class _StepStreamer:
    """Marks progress at every step (for the driver's watchdog) and, on rank 0 when the user
    passed a streamer, forwards the tokens to the driver, where that streamer lives."""

    def __init__(self, worker: Worker, forward: bool):
        self.worker, self.forward = worker, forward

    def put(self, value):
        from .protocol import STREAM

        self.worker.progress.mark()
        self.worker.check_cancel()
        if self.forward:
            self.worker.send((STREAM, ("put", value.detach().to("cpu"))))

    def end(self):
        from .protocol import STREAM

        if self.forward:
            self.worker.send((STREAM, ("end", None)))


def main() -> int:
    # The driver starts us in our own session, so a terminal's Ctrl-C never reaches us; ignoring SIGINT
    # as well keeps a signal sent to a whole process group from killing a rank in the middle of a
    # collective. Interrupting is the driver's job: it cancels the call on every rank (cancel.py).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    address, rank = sys.argv[1], int(sys.argv[2])
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    worker = Worker(address, rank, authkey)
    try:
        worker.serve()
    finally:
        try:
            from ..parallel.teardown import shutdown_group

            shutdown_group()  # graphs released first, each step bounded: a worker never hangs at exit
        except Exception:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
