"""TensorFlowOnSpark programs (our own, in its idiom), ported by changing their imports.

Each module was written against ``tensorflowonspark``; the only line changed to run it on
tfyarn is its import line, marked ``# ported``.
"""
