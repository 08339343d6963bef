"""Where models run: device, dtype, CPU threads, or policy servers (OpenAI-compatible
endpoints serving the policy, for the stages that sample from it). Assets that need a GPU
also declare the Dagster pool `gpu` (see README), so two GPU steps never share a card by
accident, and ask Kubernetes for one GPU (GPU_OP_TAGS)."""

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

GPU_POOL = "gpu"

# On Kubernetes (dagster-k8s's run launcher or k8s_job_executor) a GPU asset's pod asks for
# one GPU; Dagster's other executors ignore the tag.
GPU_OP_TAGS = {"dagster-k8s/config": {"container_config": {"resources": {
    "requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}}}


class ComputeResource(ConfigurableResource):
    device: str = Field("auto", description="auto (a GPU when there is one, on a machine with several the first "
                        "that no other step has claimed; else cpu), cpu, or cuda:N")
    dtype: str = Field("auto", description="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    threads: int | None = Field(None, description="torch CPU threads; unset: torch's default")
    policy_servers: list[str] = Field([], description="base URLs (e.g. http://gpu-1:8000/v1) of OpenAI-compatible "
                                      "servers of the policy checkpoint, served under its checkpoint id (qstar serve "
                                      "--name ID, vLLM --served-model-name ID): rollouts, Monte Carlo labels and the "
                                      "evaluation sample from them, spread over all and moved off one that dies; "
                                      "empty: the policy runs in this process")
    policy_server_concurrency: int = Field(8, description="requests in flight per stage across the policy servers")
    _threads_before: int | None = PrivateAttr(None)

    # torch's thread count is process-wide: set for a run's steps, restored after, so runs in
    # one process (qstar demo, the tests) do not inherit each other's setting.
    def setup_for_execution(self, context: InitResourceContext) -> None:
        if self.threads:
            import torch

            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            if not torch.cuda.is_available():
                return "cpu"
            from qstar_dagster.resources.devices import claim_gpu

            return f"cuda:{claim_gpu(torch.cuda.device_count())}"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"compute.device is {self.device!r} but this machine has no CUDA device; "
                               "set device to auto or cpu")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"compute.device must be auto, cpu or cuda:N, got {self.device!r}")
        return self.device

    def torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().startswith("cuda") else torch.float32
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
        except KeyError:
            raise ValueError(f"compute.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}") from None

    def policy_generator(self, checkpoint: dict, backend: str = "transformers"):
        """The Generator a stage samples a policy checkpoint (a checkpoints row) with: its
        policy servers, checked to serve this checkpoint's name and weights, or the model
        loaded here with `backend`."""
        if not self.policy_servers:
            from qstar_dagster.generation.backends import make_generator

            return make_generator(backend, checkpoint["path"], self.torch_device(), self.torch_dtype())
        from qstar_dagster.generation.openai_http import OpenAICompatibleGenerator

        gen = OpenAICompatibleGenerator(self.policy_servers, checkpoint["checkpoint_id"],
                                        max_concurrency=self.policy_server_concurrency)
        gen.check_model(checkpoint.get("sha256"))
        return gen
