"""The sampler: text -> image in latent space (pipeline.py), and the parts it is made of (the U-Net, the
text encoder, the latent space, images, device). Every module here ships inside each exported pipeline
folder (models/export.py), so they import only each other, relatively, and nothing else of ldmflow."""
