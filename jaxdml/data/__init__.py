"""Data: the embedded digit-pairs set, TFDS sources, the M-per-class sampler and the grain pipeline."""
