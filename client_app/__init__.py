"""Flower ClientApp: message handlers and client state persistence."""
