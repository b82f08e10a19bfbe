"""IRRA (Jiang and Ye, CVPR 2023): SDM + ID + cross-modal MLM, the clean-data baseline of RDE's tables."""
