"""The model service: the worker queue, engines, compression, answers."""
