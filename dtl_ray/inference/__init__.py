"""Using a finished run: predict, export, suggest labels."""
