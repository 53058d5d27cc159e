"""tiny_vlms.py (the shared builders of tiny test models) is imported by name from this folder."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
