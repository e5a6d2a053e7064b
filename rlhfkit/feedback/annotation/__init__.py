"""Human feedback: the annotation server, its page, export to training data, agreement stats.

Entry points: :func:`rlhfkit.feedback.annotation.app.create_app` (the FastAPI app),
:func:`rlhfkit.feedback.annotation.cli.main` (``rlhfkit annotate ...``) and
:func:`rlhfkit.feedback.annotation.simulated.label_with_simulated_annotators`.
"""
