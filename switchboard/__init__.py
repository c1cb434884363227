"""The ``switchboard`` command and process wiring: settings, runtime, HTTP, embedded broker."""
