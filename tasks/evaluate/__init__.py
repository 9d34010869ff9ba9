"""The evaluate stage (stage.py): sample the model, score the samples with a judge trained on the data
(judge.py, scores.py) and, on labelled data, a probe (adherence.py), sweep the guidance scale (sweep.py),
draw what the model learned into a report (views.py), and register the model with its lineage
(lineage.py) as champion or challenger (champion.py)."""
