"""Ray plumbing: knows nothing of the method."""
