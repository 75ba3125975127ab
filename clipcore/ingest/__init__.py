"""The ingest stage: caption sources -> fetched, validated, resized images in webdataset shards + manifests."""
