"""The evaluate stage (stage.py): sample the model, score the samples with a judge trained on the data
(judge.py, scores.py) and, on labelled data, a probe (adherence.py), and gate the registry (champion.py)."""
