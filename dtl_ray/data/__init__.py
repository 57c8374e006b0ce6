"""Reading the images: manifests, samples, readers, packed shards, rejects, score files."""
