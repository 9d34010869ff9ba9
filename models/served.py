"""The registered model as MLflow loads it (`mlflow models serve`, `mlflow.pyfunc.load_model`): an MLflow
"model from code". MLflow logs this file with the model and runs it on load in place of unpickling a
`python_model.pkl`; the model then reads its pipeline folder (models/pyfunc.py's `load_pipeline`).
ldmflow's own loads never run it: they read the pipeline folder alone."""

import mlflow.models

from models.pyfunc import TextToImageModel

mlflow.models.set_model(TextToImageModel())
