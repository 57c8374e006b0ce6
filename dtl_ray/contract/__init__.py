"""The stage contract: the run's layout and what each stage returns."""
