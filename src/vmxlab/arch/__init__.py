"""SDM facts as data: one table per fact; every other layer derives from these."""
