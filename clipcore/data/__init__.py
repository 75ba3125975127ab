"""Data shared by the stages: image decoding and resizing, reading webdataset shards, labeled sets, and the default
Fashion-MNIST caption dataset."""
