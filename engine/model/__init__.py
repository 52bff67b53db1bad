"""The model: HybridTransformer (EXAONE 4.0 and the Llama family), its loaders and compiled decoder.

Quantized linear layers (issue 23) belong here, beside the parallel ones they stand in for."""
