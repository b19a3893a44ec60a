"""What clients of a Transformers model read off it, answered by the single-controller handle.

``transformers.pipeline``, chat front-ends and scripts written for a ``PreTrainedModel`` read a few
attributes before they call ``generate``: ``can_generate()``, ``config``, ``generation_config``,
``device``, ``dtype``, ``name_or_path``, ``main_input_name``, and call ``model.to(device)``. Those that
mean the same thing for the handle are here. Everything else a PreTrainedModel has (parameters,
modules, state_dict, half(), ...) would need the weights in this process, which the handle does not
hold: asking for it raises an AttributeError that says so, instead of Python's bare one.
"""

from __future__ import annotations

import torch


def architecture_name(config) -> str:
    """The Transformers class a plain from_pretrained would have built (``LlamaForCausalLM``), or
    "TPModel" when the config names none."""
    names = getattr(config, "architectures", None) or []
    if names:
        return names[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    return name if isinstance(name, str) else "TPModel"


class TransformersSurface:
    """Mixed into TPModel; expects ``config``, ``generation_config``, ``spec`` and ``tp_size``."""

    main_input_name = "input_ids"  # what generate() and pipelines feed a causal LM
    input_modalities = "text"
    output_modalities = "text"

    @property
    def device(self) -> torch.device:
        """Where the handle takes and returns tensors: the CPU (the workers move them to their devices)."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights in the workers."""
        from ..assembly import resolve_dtype

        return resolve_dtype(self.spec["dtype"], self.config)

    @property
    def name_or_path(self) -> str:
        """The hub id or folder given to from_pretrained, as on a Transformers model."""
        return self.config.name_or_path

    def can_generate(self) -> bool:
        """True, as for the Transformers causal LM the workers serve."""
        return True

    def eval(self):
        """No-op, for scripts written for a Transformers model: the workers' model is always in eval mode."""
        return self

    def train(self, mode: bool = True):
        """``train(False)`` is eval(); training raises NotImplementedError, as on the launcher's model: hf_tp is
        for inference only."""
        if not mode:
            return self
        from ..generation.spmd import INFERENCE_ONLY

        raise NotImplementedError(INFERENCE_ONLY.format(what="model.train() is"))

    def resize_token_embeddings(self, *args, **kwargs):
        """Refused, as on the launcher's model (the vocabulary split is planned at load)."""
        from ..generation.spmd import RESIZE_REFUSED

        raise NotImplementedError(RESIZE_REFUSED)

    def to(self, *args, **kwargs):
        """``model.to(device)`` returns the handle unchanged: each rank's device was fixed by
        from_pretrained(device=...), and the handle takes input tensors on any device and returns CPU
        tensors (this is what ``transformers.pipeline`` calls on a GPU machine). A dtype different from
        the workers' cannot be honoured in place: ValueError."""
        dtypes = [a for a in (*args, kwargs.get("dtype")) if isinstance(a, torch.dtype)]
        if dtypes and dtypes[0] != self.dtype:
            raise ValueError(
                f"An hf_tp.TPModel cannot change its dtype in place ({self.dtype} -> {dtypes[0]}): the weights live "
                f"in the worker processes. Load it again with from_pretrained(..., dtype={dtypes[0]}).")
        return self

    def __getattr__(self, name: str):
        # Reached only for names the handle lacks. Private and dunder names keep Python's message, so
        # copy, pickle and hasattr() probes behave as usual.
        message = f"'{type(self).__name__}' object has no attribute '{name}'"
        if not name.startswith("_"):
            from transformers import PreTrainedModel

            plan = self.__dict__.get("hf_tp_plan")
            submodules = {m.split(".")[0] for m in getattr(plan, "modules", {})}  # model, lm_head, transformer...
            if hasattr(PreTrainedModel, name) or name in submodules:
                message += (
                    f": this is an hf_tp.TPModel handle, and the model it serves lives split across "
                    f"{self.__dict__.get('tp_size', 'its')} worker processes, so what reads or changes modules, "
                    "parameters or buffers in this process cannot work. The handle offers generate(), model(...), "
                    "config, generation_config, save_pretrained(), memory() and health(); to get the Transformers "
                    "model object itself, run the script under torchrun --nproc-per-node N (SPMD mode).")
        raise AttributeError(message)
