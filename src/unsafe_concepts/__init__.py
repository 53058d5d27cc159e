"""unsafe-concepts: measure and close the modality gap of VLMs on unsafe concepts."""
__version__ = "0.1.0"
