"""What the stages share: config, project paths, object storage (and the embedded S3 server), MLflow
tracking, the ingested-data and content-addressed cache formats, keys, process helpers, and how one
stage is run. Stage code lives beside this folder, one file or folder per stage."""
