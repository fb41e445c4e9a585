"""Training: state and steps, optimiser, checkpoints, metric writers and the train-and-evaluate loop."""
