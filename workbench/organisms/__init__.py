"""Model organisms: small, deterministic fine-tunes of a base model that show a behaviour the
base model lacks, built once and cached (``workbench.organisms.refusal``: a model that refuses
harmful requests, for the safety-head analysis)."""
