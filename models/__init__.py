"""Pure model code, by role: sampler/ (what ships in an exported pipeline), diffusion/ (the training
objective), autoencoder/ (the VAE recipe), judges/ (evaluation's models), views/ (what the report draws);
beside them the registered form (pyfunc.py, served.py, export.py), pretrained parts and fingerprints.

Imports torch, diffusers, transformers (and mlflow's model API in `pyfunc.py` and `served.py` only); never
orchestration, tracking or storage code.
"""
