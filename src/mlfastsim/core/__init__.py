"""What every workflow shares; knows nothing of physics."""
