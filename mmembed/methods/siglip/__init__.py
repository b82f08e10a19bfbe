"""SigLIP: image-text training with the pairwise sigmoid loss."""
