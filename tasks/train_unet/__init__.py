"""The train_unet stage: loop.py is the loop; the parts it calls sit beside it."""

# Written beside a training run's checkpoints when it completes (checkpoints.py); `ldmflow gc` reads it
# without importing the training code.
FINISHED = "finished.json"
