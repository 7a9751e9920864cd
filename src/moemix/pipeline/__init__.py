"""The pipeline's stages as plain functions over typed configs (no Ray; ``moemix.ray_jobs`` binds them)."""

# in order: each stage reads the previous one's output, and each has a config section of the same name
STAGES = ("domains", "proxies", "fit", "propose", "pretrain")
