"""What decides the stages' outputs and every stage shares (a DVC dep of each): config, the output
contract (paths.py), content keys, the ingested-data and content-addressed cache formats, atomic outputs,
curves. What only moves bytes and logs is in `infra/`, no stage's dep. Stage code lives beside this
folder, one file or folder per stage."""
