"""Capability profiles and adjustment through the capability MSRs."""
from .adjust import Adjustment, adjust, adjust_cr
from .profile import DEFAULT_PROFILE, Profile, load, shipped

__all__ = ["Profile", "load", "shipped", "DEFAULT_PROFILE", "adjust", "adjust_cr", "Adjustment"]
