import pytest
import torch
from dagster import DagsterInstance, asset, materialize

from qstar_dagster.resources.compute import ComputeResource


def test_auto_picks_what_the_machine_has():
    c = ComputeResource()
    assert c.torch_device() == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert c.torch_dtype() == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ComputeResource(device="cuda:0").torch_device()


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="auto, cpu or cuda:N"):
        ComputeResource(device="tpu").torch_device()
    with pytest.raises(ValueError, match="float32"):
        ComputeResource(dtype="int8").torch_dtype()


def test_threads_hold_for_the_run_and_are_restored_after():
    seen = []

    @asset
    def counts_threads(compute: ComputeResource) -> None:
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    with DagsterInstance.ephemeral() as instance:
        assert materialize([counts_threads], instance=instance,
                           resources={"compute": ComputeResource(threads=wanted)}).success
    assert seen == [wanted] and torch.get_num_threads() == before
