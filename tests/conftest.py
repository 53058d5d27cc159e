"""Session-wide test settings."""
import os

# Must precede the first `import torch` of the session: spinning OpenMP threads (the libgomp default)
# made model tests up to ~20x slower on a shared 2-core CPU (a SmolLM2 test: 192 s -> 9 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
