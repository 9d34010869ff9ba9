"""The KL autoencoder's training recipe: the VAE and its loss, the PatchGAN, LPIPS."""
