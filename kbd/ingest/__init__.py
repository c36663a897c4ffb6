"""From a file to stored passages: the pipeline, its parsers and the chunker."""
