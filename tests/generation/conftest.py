import pytest

from qstar_dagster.training.charlm import char_tokenizer, tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained tiny character-level Llama and its tokenizer, saved the standard way."""
    path = tmp_path_factory.mktemp("tiny-charlm")
    tok = char_tokenizer()
    tiny_llama(tok, hidden=64, layers=2, heads=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path
