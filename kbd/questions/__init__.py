"""Standing questions: their specs and the scheduler."""
