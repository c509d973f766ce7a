"""hostmesh-agent: writes Envoy's bootstrap, runs and supervises Envoy on a VM."""

__version__ = "0.1.0"
