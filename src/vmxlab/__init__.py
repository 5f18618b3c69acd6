"""vmxlab: an Intel VT-x (VMX) toolkit and simulated VMX processor in Python."""
__version__ = "0.1.0"
