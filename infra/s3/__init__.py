"""The embedded SeaweedFS S3 server: started, secured and stopped by the project (embedded.py, tls.py,
idle.py). Users with their own S3 endpoint never start it."""
