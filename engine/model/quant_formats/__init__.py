"""LG's quantized EXAONE 4.0 checkpoint formats (AWQ, GPTQ, FP8): config, packings, the loader's stream."""
