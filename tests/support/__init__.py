"""Code the tests share: the daemon harness, the reference CLaRa, receivers, tiny checkpoints."""
