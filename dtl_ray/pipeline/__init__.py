"""The pipeline: runs the stages in order."""
