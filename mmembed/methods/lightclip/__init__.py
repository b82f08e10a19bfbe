"""LightCLIP (Nie et al., 2023): lightweight CLIP with progressive soft labels, token matching and MLM fusion."""
