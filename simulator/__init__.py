"""Simulator: a city's fleet without hardware, with fault injection and ground truth."""
