"""tailored_hf: physically smaller, task-tailored LLaMA-family models inside a transformers Trainer run."""

__version__ = "0.1.0.dev0"
