"""A causal language model fine-tuned with LoRA on Flower, with fedlora's secure aggregation."""
