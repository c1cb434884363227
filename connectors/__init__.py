"""Channel connectors: one module per channel type behind :class:`connectors.base.Connector`."""
