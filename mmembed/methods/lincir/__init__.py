"""LinCIR: language-only training of the projection for zero-shot composed image retrieval.

Submodules are imported explicitly (``mmembed.methods.lincir.keywords``).
"""
