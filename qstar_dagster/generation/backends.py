"""Pick a backend for a model on disk: the one place stages turn a checkpoint into a Generator."""

from __future__ import annotations

from qstar_dagster.generation.base import Generator

BACKENDS = ("transformers", "vllm")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be transformers or vllm, got {backend!r}")


def make_generator(backend: str, model_path: str, device: str = "cpu", dtype=None) -> Generator:
    """transformers (CPU or GPU) or vLLM (GPU, extra `gpu`; imported only here)."""
    check_backend(backend)
    if backend == "vllm":
        from qstar_dagster.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(model_path)
    from qstar_dagster.generation.hf import TransformersGenerator

    return TransformersGenerator(model_path, device=device, dtype=dtype)
