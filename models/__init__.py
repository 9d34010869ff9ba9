"""Pure model code: diffusers/transformers builders, losses, sampler glue and the pyfunc model.

Imports torch, diffusers, transformers (and mlflow.pyfunc in `pyfunc.py` only); never orchestration,
tracking or storage code.
"""
