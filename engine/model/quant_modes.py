"""The --quantization modes, in a module without torch so the CLI can name them before anything heavy loads."""

CPU_MODES = ("none", "int8", "fp16")  # CPU linear weights (engine.model.quant)
# vLLM's names for a quantized checkpoint's format: each asserts what config.json's quantization_config says
# (the format is read from there either way) and serves the checkpoint as stored: int8 on the CPU.
CHECKPOINT_METHODS = ("awq", "gptq", "fp8")
QUANTIZATION_MODES = CPU_MODES + CHECKPOINT_METHODS
