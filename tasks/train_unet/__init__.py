"""The train_unet stage: loop.py is the loop; the parts it calls sit beside it."""
