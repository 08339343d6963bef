import pytest
import torch

from qstar_dagster.resources.compute import ComputeResource


def test_auto_picks_what_the_machine_has():
    c = ComputeResource()
    assert c.torch_device() == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert c.torch_dtype() == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ComputeResource(device="cuda:0").torch_device()


def test_bad_values_are_refused_and_threads_apply():
    with pytest.raises(ValueError, match="auto, cpu or cuda:N"):
        ComputeResource(device="tpu").torch_device()
    with pytest.raises(ValueError, match="float32"):
        ComputeResource(dtype="int8").torch_dtype()
    before = torch.get_num_threads()
    try:
        ComputeResource(threads=1).apply_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
