"""Pseudo masks: sliding-window inference, the batch frame, CLIP-ES seeds, evaluation, the report, CPU tiers."""
