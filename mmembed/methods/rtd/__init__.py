"""RTD: reducing the task discrepancy of text encoders for zero-shot composed image retrieval.

Submodules are imported explicitly (``mmembed.methods.rtd.triplets``).
"""
