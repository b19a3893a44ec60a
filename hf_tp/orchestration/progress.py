"""Progress marks inside a forward pass, so that the driver can tell a long computation from a hang.

A prefill of thousands of tokens (or a long-context prefill of a big model) is one forward pass that can
take longer than ``timeout_s``. Marked only per call and per decode step, its ranks looked idle and the
watchdog stopped them. Now each decoder layer marks the rank's progress when it finishes: while every rank
is alive, heartbeating and finishing layers, the call is computing. A rank that has waited for longer than
``timeout_s`` without finishing a layer is stuck: hung itself, or waiting in a collective a peer never
reached. How far each rank got in the current call (call started, forward passes entered, decoder layers
finished; sent with its heartbeat) tells the driver which rank is behind, the one the others wait for.

On CUDA a mark means the layer's kernels were launched, not run; the host runs ahead of the GPU by at most
the launch queue, then waits for it, so the marks follow the GPU's pace to within a few layers.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..faults import fault_seconds, injected_fault


def decoder_layers(model: nn.Module, split_modules) -> list[nn.Module]:
    """The modules a forward pass runs one after another: for each split module (names from the sharding
    plan), its outermost ancestor that sits in an ``nn.ModuleList`` (``model.layers.3`` for
    ``model.layers.3.mlp.experts.0.down_proj``). The split modules themselves when none is in a list."""
    modules = dict(model.named_modules())
    layers: dict[str, nn.Module] = {}
    for name in split_modules:
        parts = name.split(".")
        for depth in range(1, len(parts)):
            if isinstance(modules.get(".".join(parts[:depth])), nn.ModuleList):
                prefix = ".".join(parts[:depth + 1])
                layers[prefix] = modules[prefix]
                break
    if not layers:
        layers = {name: modules[name] for name in split_modules if name in modules}
    return list(layers.values())


class ProgressMarks:
    """``time``: when this rank last started serving a call, entered a forward pass, finished a decoder layer,
    or began or ended a decode step. ``count``: how many of those marks it made in the current call, but for
    decode steps (ranks in lockstep reach the same counts; a rank left behind has fewer). Written by the serving thread,
    read by the heartbeat thread: plain attributes, each assignment atomic under the GIL."""

    def __init__(self):
        self.time = time.time()
        self.count = 0

    def mark(self) -> None:
        self.time = time.time()

    def new_call(self) -> None:
        self.count = 0
        self.time = time.time()

    def reached(self, *_hook_args) -> None:
        # Compiled code (the decode loop's step) leaves this out: Dynamo evaluates is_compiling() to True
        # and traces nothing, so a captured CUDA graph holds no host work. Its steps are marked per token.
        if torch.compiler.is_compiling():
            return
        self.count += 1
        self.time = time.time()

    def install(self, model: nn.Module, split_modules, rank: int) -> int:
        """Hook the input embedding (entering a forward pass: a rank that never gets there is the one its
        peers wait for) and every decoder layer of ``model`` (finishing it); returns the number of layers.
        With the test fault ``RANK:layer:slow`` (hf_tp/faults.py) this rank also sleeps $HF_TP_FAULT_SECONDS
        before each layer: a slow but progressing forward, without a model large enough to be slow."""
        layers = decoder_layers(model, split_modules)
        embedding = model.get_input_embeddings()
        if embedding is not None:
            # prepend: before the embedding's own id check, which waits for the peers in a collective
            embedding.register_forward_pre_hook(self.reached, prepend=True)
        slow = injected_fault(rank, "layer") == "slow"
        for layer in layers:
            if slow:
                seconds = fault_seconds()
                layer.register_forward_pre_hook(lambda _module, _args: time.sleep(seconds))
            layer.register_forward_hook(self.reached)
        return len(layers)
