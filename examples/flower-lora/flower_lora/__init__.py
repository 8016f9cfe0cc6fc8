"""FFA-LoRA on the bank workload as a Flower app, with fedlora's secure aggregation."""
