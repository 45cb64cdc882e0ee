"""Hardware-aware inference: build every deployment candidate this CPU can run, measure them,
and keep the fastest one that stays within the accuracy tolerance."""
