"""SecAgg+ on Flower's Message API: the server learns only the sum of the devices' updates."""
