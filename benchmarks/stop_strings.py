"""Per-token cost of the stop-string check: one 8,192-char stop string over ~5K chars of output.

    .venv/bin/python benchmarks/stop_strings.py
    git show e517ca7:engine/detokenizer.py > /tmp/detok_old.py
    .venv/bin/python benchmarks/stop_strings.py --detokenizer /tmp/detok_old.py   # another implementation
"""

from __future__ import annotations

import argparse
import importlib.util
import time

from engine.core.sampling_params import SamplingParams
from engine.model.gguf_loader import gguf_tokenizer_dir
from engine.model.loader import default_model_path
from engine.text.tokenizer import Tokenizer


def main() -> None:
    """Print milliseconds per IncrementalDetokenizer.update of one token."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detokenizer", help="a detokenizer.py to load instead of engine/text/detokenizer.py")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--stop-chars", type=int, default=8192)
    args = parser.parse_args()
    if args.detokenizer:
        spec = importlib.util.spec_from_file_location("detokenizer_under_test", args.detokenizer)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        detokenizer_class = module.IncrementalDetokenizer
    else:
        from engine.text.detokenizer import IncrementalDetokenizer as detokenizer_class
    tokenizer = Tokenizer(gguf_tokenizer_dir(default_model_path()))
    ids = tokenizer.encode("lorem ipsum dolor sit amet " * (args.tokens // 2))[: args.tokens]
    detok = detokenizer_class(tokenizer, [], SamplingParams(stop=["x" * args.stop_chars]))
    start = time.perf_counter()
    for token in ids:
        detok.update([token])
    seconds = time.perf_counter() - start
    print(f"{len(ids)} tokens ({len(detok.output_text)} chars of output), one {args.stop_chars}-char stop: "
          f"{1e3 * seconds / len(ids):.3f} ms per token")


if __name__ == "__main__":
    main()
