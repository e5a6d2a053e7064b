"""Feedback: human annotation (``annotation``), simulated annotators and AI labelling."""
