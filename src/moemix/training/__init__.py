"""The training loop proxies and pretraining share, and how it spreads over ranks (FSDP2, DCP)."""
