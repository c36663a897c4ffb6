"""The networks: CLaRa (checkpoint, tokens, encode, decode, index), the text engine's model,
the dense ranker and the Triton kernels. Nothing here imports the rest of kbd but its errors."""
