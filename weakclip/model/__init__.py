"""The network: CLIP towers, prompts, pyramid adapter, co-attention, decoder, losses, CRF, checkpoints."""
