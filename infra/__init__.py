"""Infrastructure: what moves bytes and logs and decides no output. The embedded S3 server and its TLS,
the S3 client, MLflow tracking, local run state, processes, progress, parallel maps.

No stage lists this package among its DVC deps (tasks/graph.py), so editing it re-runs nothing; a test
holds that rule. It imports no stage code (`tasks/`) and no orchestration (`flows/`)."""
