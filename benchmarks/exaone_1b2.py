"""Write a random-weight checkpoint shaped like EXAONE-4.0-1.2B, the EXAONE model that runs on a CPU.

    .venv/bin/python benchmarks/exaone_1b2.py [--root /tmp]   # prints /tmp/exaone4/exaone-4.0-1.2b-random

The real weights cannot be downloaded here; speed depends on shapes, not values. Shapes follow the
published config: 30 layers, all global (RoPE everywhere, no sliding window), hidden 2048, MLP 4096,
32 query / 8 KV heads of 64, a tied 102,400-row embedding: 1.28 B parameters, 5.1 GB in fp32.
The tokenizer is the tests' EXAONE stand-in (SmolLM2's vocabulary plus EXAONE's role and tag tokens).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAONE_1B2 = {
    "num_hidden_layers": 30,
    "hidden_size": 2048,
    "intermediate_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 102400,
    "max_position_embeddings": 65536,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e6, "factor": 16.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "initializer_range": 0.02,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp"), help="the checkpoint goes under root/exaone4/")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures_exaone import make_exaone_model

    print(make_exaone_model(args.root, "exaone-4.0-1.2b-random", **EXAONE_1B2))


if __name__ == "__main__":
    main()
