"""Which tensor-parallel sizes a model admits, and the one line that says why not."""

import pytest

from engine.config import ModelConfig
from engine.parallel.sizes import kv_heads_per_rank, validate_tensor_parallel


def _config(heads: int, kv_heads: int, intermediate: int, vocab: int) -> ModelConfig:
    return ModelConfig.from_hf({"architectures": ["Exaone4ForCausalLM"], "num_hidden_layers": 4, "hidden_size": 5120,
                                "head_dim": 128, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                                "intermediate_size": intermediate, "vocab_size": vocab})


EXAONE_32B = _config(40, 8, 27392, 102400)  # EXAONE 4.0-32B's shapes


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_exaone_32b_splits_over_1_2_4_8(size):
    validate_tensor_parallel(EXAONE_32B, size)
    assert kv_heads_per_rank(8, size) == 8 // size


@pytest.mark.parametrize(("size", "named"), [
    (3, "attention heads (40), intermediate_size (27392), vocab_size (102400), KV heads (8, or be a multiple of them)"),
    (16, "attention heads (40)"),
])
def test_bad_size_names_every_dimension_in_one_line(size, named):
    with pytest.raises(ValueError) as err:
        validate_tensor_parallel(EXAONE_32B, size)
    assert str(err.value) == f"tensor_parallel_size {size} must divide this model's {named}"


def test_more_ranks_than_kv_heads_replicates_them():
    validate_tensor_parallel(_config(32, 8, 8192, 32768), 16)
    assert kv_heads_per_rank(8, 16) == 1
