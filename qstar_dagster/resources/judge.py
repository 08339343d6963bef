"""Which model judges steps: the factory's built-in judge checkpoint, a local model, or a
large model behind an OpenAI-compatible endpoint. The key is read from an environment
variable when the client is made; it is never in config, logs or the store."""

from collections.abc import Callable

from dagster import ConfigurableResource
from pydantic import Field

from qstar_dagster.generation.base import Generator
from qstar_dagster.lineage import LineageStore

JUDGE_BACKENDS = ("builtin", "transformers", "vllm", "openai")


class JudgeResource(ConfigurableResource):
    backend: str = Field("builtin", description="builtin (the judge_model asset's checkpoint), transformers or "
                         "vllm (a local model directory), openai (an OpenAI-compatible endpoint)")
    model: str | None = Field(None, description="builtin: judge checkpoint id (unset: the latest); transformers/"
                              "vllm: model directory; openai: the served model's name")
    base_url: str | None = Field(None, description="openai: e.g. http://gpu-box:8000/v1 or https://api.openai.com/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key")
    mode: str = Field("chat", description="openai: chat (/v1/chat/completions) or completions")
    max_concurrency: int = Field(8, description="openai: requests in flight")

    def resolve(self, store: LineageStore, device: str = "cpu", dtype=None) -> tuple[str, Callable[[], Generator]]:
        """(the id recorded on every label: a checkpoint id, model path or 'openai:<model>',
        a function that loads the judge). Errors name the setting to fix."""
        if self.backend not in JUDGE_BACKENDS:
            raise ValueError(f"judge.backend must be one of {', '.join(JUDGE_BACKENDS)}, got {self.backend!r}")
        from qstar_dagster.generation.backends import make_generator

        if self.backend == "builtin":
            ck = store.checkpoint(self.model, "judge")
            return ck["checkpoint_id"], lambda: make_generator("transformers", ck["path"], device, dtype)
        if not self.model:
            raise ValueError(f"judge.model is required with backend {self.backend!r}")
        if self.backend == "openai":
            if not self.base_url:
                raise ValueError("judge.base_url is required with backend 'openai' (e.g. http://localhost:8000/v1)")
            from qstar_dagster.generation.openai_http import OpenAICompatibleGenerator

            return f"openai:{self.model}", lambda: OpenAICompatibleGenerator(
                self.base_url, self.model, mode=self.mode, api_key_env=self.api_key_env,
                max_concurrency=self.max_concurrency)
        return self.model, lambda: make_generator(self.backend, self.model, device, dtype)
