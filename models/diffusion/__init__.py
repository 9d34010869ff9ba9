"""Training the denoiser: the noise schedule, the objective and its loss, and each sample's random draws."""
