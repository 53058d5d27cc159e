"""Model backends behind one interface (base.py); registry.py turns a spec string into a backend."""
