"""plandiff.model.training: the planned-diffusion training objective, data and loop."""
