"""SVI and MCMC drivers: the only place that tells the two apart."""
