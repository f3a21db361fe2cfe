"""Flower ServerApp and the FedMuscle Strategy."""
