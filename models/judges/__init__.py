"""Evaluation's own models, trained on the user's data: the judge (contrastive image and caption encoders,
and the metrics in its space) and the attribute probe, on one small convolutional trunk."""
