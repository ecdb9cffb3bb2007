"""Noise schedule, v-prediction training loss and DPM-Solver++ sampling with classifier-free guidance."""
