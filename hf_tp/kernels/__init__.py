"""Kernels hf_tp ships (Triton inside torch, or plain torch), each with a reference implementation and a
fallback that is chosen once at load and shown in ``model.hf_tp_config``."""
