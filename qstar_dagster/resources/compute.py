"""Where models run: device, dtype, CPU threads. Assets that need a GPU also declare the
Dagster pool `gpu` (see README), so two GPU steps never share a card by accident."""

from dagster import ConfigurableResource
from pydantic import Field

GPU_POOL = "gpu"


class ComputeResource(ConfigurableResource):
    device: str = Field("auto", description="auto (cuda:0 when there is one, else cpu), cpu, or cuda:N")
    dtype: str = Field("auto", description="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    threads: int | None = Field(None, description="torch CPU threads; unset: torch's default")

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda:0" if torch.cuda.is_available() else "cpu"
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

    def apply_threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
