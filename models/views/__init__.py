"""What the report shows of a trained model: its latent space, walks between seeds and prompts, and the
cross-attention maps of a prompt's tokens."""
