"""Promotion: an image that proved itself in one environment committed to another, and
image bumps from CI, as one-line commits to the desired-state repository (DESIGN §8)."""
