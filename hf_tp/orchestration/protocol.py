"""The driver<->worker protocol: message shapes and how exceptions cross the process boundary.

Transport: one multiprocessing.connection per worker, over a Unix socket in a private (0700)
temporary folder, with a random authentication key handed to the worker on its stdin. Only
processes that know the key can connect, so nothing from another user or host is unpickled.

Driver -> worker: (call_id, op, payload bytes) with op in LOAD, GENERATE, FORWARD, MEMORY, SAVE, SHUTDOWN,
                  or CANCEL (payload None: stop serving call ``call_id`` at the next decode step; sent when
                  the user interrupts the driver). A reader thread in the worker takes every message as it
                  arrives, so CANCEL and SHUTDOWN are seen while a request is being served.
                  The payload is pickled on its own (``pack``), so that an argument the worker cannot
                  rebuild (a class defined in the user's __main__) fails that one call, not the worker.
Worker -> driver: (OK, value) | (ERROR, type_name, message, traceback) | (STREAM, tokens) | (CANCELLED,)
                  | (HEARTBEAT, heartbeat_time, progress_time, compiling_since (None when not compiling),
                     call_id, marks (call started + forward passes entered + decoder layers finished, in call
                     ``call_id``)).
                  progress_time is when the rank last made one of those marks, or began or ended a decode
                  step or a call (progress.py). Every message but HEARTBEAT ends with the id of the call it answers.
"""

from __future__ import annotations

import builtins
import pickle

import torch

from ..errors import CheckpointError, PolicyError, ShardingError, WorkerError

LOAD, GENERATE, FORWARD, MEMORY, SAVE, SHUTDOWN = "load", "generate", "forward", "memory", "save", "shutdown"
CANCEL = "cancel"
OK, ERROR, STREAM, HEARTBEAT, CANCELLED = "ok", "error", "stream", "heartbeat", "cancelled"
STREAMER = "<driver streamer>"  # stands in for a streamer object, which stays in the driver

_KNOWN = {cls.__name__: cls for cls in (ShardingError, PolicyError, CheckpointError, WorkerError)}
_KNOWN["OutOfMemoryError"] = torch.OutOfMemoryError


def send(conn, message) -> None:
    """Plain pickle over the socket. Connection.send would use torch's multiprocessing reducers,
    which pass tensors as shared-memory file descriptors: fragile across unrelated processes."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn):
    return pickle.loads(conn.recv_bytes())  # only from authenticated peers (see module docstring)


_NOT_SENDABLE = ("Objects passed to the workers (logits processors, stopping criteria, functions) must be "
                 "importable there: define them at the top level of a module on the PYTHONPATH, not in __main__, "
                 "a notebook cell, or as a lambda or a local function.")


def pack(payload, what: str) -> bytes:
    """The payload of one request, pickled once for every rank; TypeError if it cannot be pickled."""
    try:
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # PicklingError, AttributeError, TypeError, depending on the object
        raise TypeError(f"an argument of {what}() cannot be sent to the worker processes ({exc}). {_NOT_SENDABLE}") from None


def unpack(data: bytes, what: str):
    """The payload rebuilt in the worker; TypeError if the worker cannot import what it refers to."""
    try:
        return pickle.loads(data)
    except Exception as exc:  # AttributeError / ModuleNotFoundError naming the missing class
        raise TypeError(f"an argument of {what}() cannot be rebuilt in the worker processes ({exc}). {_NOT_SENDABLE}") from None


def to_cpu(obj):
    """Tensors (also inside tuples, lists, dicts and ModelOutputs) moved to the CPU for the driver."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):  # ModelOutput is a dict subclass; keep its type
        out = type(obj)(**{k: to_cpu(v) for k, v in obj.items()}) if hasattr(obj, "to_tuple") else {k: to_cpu(v) for k, v in obj.items()}
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_device(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def rebuild_exception(type_name: str, message: str, trace: str, rank: int) -> BaseException:
    """The worker's exception as its own kind where we can rebuild it, carrying the worker traceback."""
    text = f"{message}\n\n--- traceback from tp rank {rank} ---\n{trace}"
    cls = _KNOWN.get(type_name) or getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:  # exception types with unusual constructors
            pass
    return RuntimeError(f"{type_name}: {text}")
